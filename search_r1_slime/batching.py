"""Coalescing: items that arrive close together travel in one request.

Both the local retrieval client (queries into one ``/retrieve``) and the LLM judge (answers into
one prompt) send what their callers ask within ``wait`` seconds of each other, up to
``max_items`` at a time, and hand each caller exactly its own result. ``Coalescer`` is that
mechanism, once. It lives in one event loop (keep one per loop, e.g. in an ``http_client.PerLoop``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Generic, TypeVar

from search_r1_slime.http_client import RequestFailed, scrub

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Batches of ``Item`` for ``send(items, deadline)``, which returns one ``Result`` per item, in order.

    ``timeout``: seconds an item may take from the moment its batch leaves plus the wait it spent
    gathering; ``send`` gets the monotonic deadline. ``split(exc)``: whether a failed batch of several
    items is sent again one item per request (one item may be what the server refused). A failure
    reaches every caller of the batch as ``RequestFailed``; anything else that escapes ``send`` is
    turned into one, its message scrubbed of ``secrets`` and prefixed with ``what``.
    """

    def __init__(
        self,
        send: Callable[[list[Item], float], Awaitable[list[Result]]],
        *,
        max_items: int,
        wait: float,
        timeout: float,
        split: Callable[[Exception], bool],
        what: str,
        secrets: Collection[str] = (),
    ):
        self._send = send
        self._max_items = max_items
        self._wait = wait
        self._timeout = timeout
        self._split = split
        self._what = what
        self._secrets = secrets
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    def submit(self, item: Item) -> asyncio.Future[Result]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self._max_items:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._wait, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        deadline = time.monotonic() + self._timeout - self._wait  # the gathering wait came out of it
        task = asyncio.ensure_future(self._settle(batch, deadline))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _settle(self, batch: list[tuple[Item, asyncio.Future[Result]]], deadline: float) -> None:
        # Every future of the batch is settled whatever happens, so no caller can hang on it.
        try:
            results = await self._send([item for item, _ in batch], deadline)
        except BaseException as exc:
            if len(batch) > 1 and isinstance(exc, Exception) and self._split(exc):
                await asyncio.gather(*(self._settle([entry], deadline) for entry in batch))
                return
            failure = exc if isinstance(exc, RequestFailed) else RequestFailed(
                f"{self._what} failed: {type(exc).__name__}: {scrub(str(exc), self._secrets)}"
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(RequestFailed(str(failure), status=failure.status))
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
