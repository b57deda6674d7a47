"""Bounds on what a client controls before the app sees its request: the request head's size, its
number of headers, the time it takes to arrive, and the number of open connections.

uvicorn with httptools bounds none of them: llhttp has no limit on a head, httptools joins the
pieces of a long header value one read at a time (quadratic time: one 80 MB header cost ~80 MB
and seconds of CPU), and uvicorn's one timer (``timeout_keep_alive``) runs only between requests,
so a client that sends its head a byte at a time, or nothing at all, holds its connection forever.
``uvicorn_config`` runs the app on uvicorn's httptools protocol with these bounds added (h11 is
never selected: the ``retriever`` extra installs httptools). Each refusal is a JSON ``{"detail"}``
that names the flag, and closes the connection. The body's bounds are the app's (``BodyLimits``),
which bound a body as the app reads it; a body the app never reads (it answered first: 401, 404,
405) ends its connection once the answer is sent (``on_response_complete``).
"""

from __future__ import annotations

import asyncio
import json
import logging

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from local_dense_retriever.server_config import RETRY_AFTER_S, ServerConfig

logger = logging.getLogger(__name__)

# The subclass below extends these methods of uvicorn's httptools protocol, an internal class that
# uvicorn may change in any release. The retrieval server's tests pass with uvicorn 0.29.0
# (pyproject's minimum) and 0.54.0; a release without one of them fails here, at import, rather
# than serving without the bounds. (A change of their behaviour only the tests can catch.)
EXTENDED = ("connection_made", "connection_lost", "data_received", "on_header", "on_headers_complete",
            "on_message_complete", "on_response_complete", "send_400_response")


def check_protocol(protocol: type, version: str) -> None:
    missing = [name for name in EXTENDED if not callable(getattr(protocol, name, None))]
    if missing:
        raise ImportError(f"uvicorn {version}'s httptools protocol has no {', '.join(missing)}, which the "
                          "retrieval server's request-head bounds extend; install a uvicorn from 0.29 to 0.54")


check_protocol(HttpToolsProtocol, uvicorn.__version__)


class _TooManyHeaders(Exception):
    """Raised from a parser callback: it stops httptools, whose error uvicorn turns into a refusal."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head and connection bounds of ``limits``.

    A head is the request line and headers: it must arrive within ``header_timeout_s`` (counted
    from the connection's opening, or from a later request's first byte; uvicorn's keep-alive
    timer covers the wait between requests), in at most ``max_header_bytes`` bytes, with at most
    ``max_headers`` headers. Data is handed to the parser no further than the byte budget allows,
    so a refused head never costs more than the budget. A body is handed over as it comes (the app
    bounds it), so the head of a pipelined request that starts in the same read as the previous
    body is counted from the next read on: at most one read (256 KiB) more.
    """

    limits: ServerConfig  # set by bounded_protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True
        self._in_body = False  # the head of the latest request is in, its body is not complete
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, f"{self.limits.max_connections} connections are open, the most this server takes "
                         "(--max_connections); retry shortly", retry_after=True)
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and not self.transport.is_closing():
            if not self._in_head:
                super().data_received(data)
                return
            if self._head_timer is None:  # the first byte of a later request's head
                self._arm_head_timer()
            room = self.limits.max_header_bytes - self._head_bytes
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self._in_head and self._head_bytes >= self.limits.max_header_bytes:
                # The budget is spent and the head is not complete: it is larger than allowed.
                self._refuse(431, f"the request head (request line and headers) is larger than "
                             f"{self.limits.max_header_bytes} bytes (--max_header_bytes)")
                return

    # Parser callbacks (uvicorn's, with the bounds' bookkeeping).

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.max_headers:
            self._refusal = (431, f"the request has more than {self.limits.max_headers} headers (--max_headers)")
            raise _TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def on_response_complete(self) -> None:
        # Answered before its body was complete (the app refused the request without reading it):
        # uvicorn would read and drop the rest for as long as the client sends it, and each byte
        # stops its keep-alive timer, so a client claiming a huge body and sending it a byte at a
        # time held the connection forever. The connection ends instead. (With a pipelined request
        # waiting, the latest head is that request's: the answered one was complete.)
        if self._in_body and not self.pipeline:
            self.transport.close()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error with a 400; a bound's own refusal says which it was.
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            super().send_400_response(msg)

    # Bounds.

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._refuse(408, f"the request head did not arrive within {self.limits.header_timeout_s:g} s (--header_timeout_s)")

    def _refuse(self, status: int, detail: str, *, retry_after: bool = False) -> None:
        if self.transport.is_closing():
            return
        self._cancel_head_timer()
        client = "%s:%d" % self.client if self.client else "a client"
        logger.warning("refused %s: %s", client, detail)
        body = json.dumps({"detail": detail}).encode()
        head = [STATUS_LINE[status], b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n"]
        if retry_after:
            head.append(b"retry-after: %d\r\n" % RETRY_AFTER_S)
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()


def bounded_protocol(limits: ServerConfig) -> type[BoundedHttpToolsProtocol]:
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})


def uvicorn_config(app, limits: ServerConfig, **options) -> uvicorn.Config:
    """uvicorn's config for ``app`` with the bounds of ``limits``; ``options`` go to uvicorn.Config as they are."""
    # uvicorn's access log off: the app logs each request itself (app.RequestLog).
    return uvicorn.Config(app, http=bounded_protocol(limits), access_log=False, **options)
