"""Run an aiohttp application on a free loopback port for the length of a test."""

from __future__ import annotations

import socket

from aiohttp import web


class LoopbackServer:
    """An aiohttp app served on ``host`` (a loopback address: 127.0.0.1 unless told, any of
    127.0.0.0/8 works on Linux) at a free port. Use ``async with``."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1"):
        self.app = app
        self.host = host
        self._runner: web.AppRunner | None = web.AppRunner(app)
        self.port: int | None = None

    async def __aenter__(self) -> "LoopbackServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on a free port, or again on the same port after ``stop`` (a restarted server)."""
        if self._runner is None:
            self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port or 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every open connection, as a server process that exits does."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.port}{path}"


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
