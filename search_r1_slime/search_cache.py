"""What the two search backends share: result reuse (single flight plus a bounded LRU cache),
its cache keys and counters, and the document format both return.

Why: in a GRPO step the n samples of one prompt usually issue the same query at about the same
time, and later steps repeat popular queries. Sending each of them to the retriever (or paying
serper.dev for each) is pure waste. ``SearchCache.get_or_run`` sends a query once while it is in
flight, hands every caller its own copy of the answer, and keeps finished answers in an LRU of
bounded size. Failures are never cached: the next caller tries again.

A backend keeps one ``SearchCache`` per event loop (``http_client.PerLoop``): slime keeps one
long-lived loop, while tests make a loop per test, and an asyncio future must never be awaited from
another loop.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from search_r1_slime.http_client import RequestFailed

# Upstream's stand-ins for a passage without a title or without text.
NO_TITLE = "No title."
NO_SNIPPET = "No snippet available."


def document(title: str, text: str) -> dict:
    """One result in Search-R1's format: ``{"document": {"contents": '"title"\\ntext'}}``."""
    return {"document": {"contents": f'"{title or NO_TITLE}"\n{text or NO_SNIPPET}'}}


def refuse_blank(query: str) -> None:
    """Raise ``RequestFailed`` for a query without text (what ``str.strip`` removes is all there
    is): no backend can answer it and a strict server would refuse it, so it is never sent."""
    if not query.strip():
        raise RequestFailed("the query is empty or blank; it was not sent")


def cache_key(backend: str, source: Hashable, query: str, top_k: int) -> tuple:
    """What makes two searches the same: the backend, where it asks (servers, endpoint and mode),
    the query and top_k. Never a key or token: answers do not depend on who asked."""
    return (backend, source, query, top_k)


@dataclass
class CacheStats:
    """What happened to the queries asked: ``sent`` went out, the others were served locally."""

    sent: int = 0
    cache_hits: int = 0
    in_flight_hits: int = 0


class SearchCache:
    """Single flight for queries in flight, bounded LRU for finished ones (one per loop)."""

    def __init__(self) -> None:
        self._done: OrderedDict[Hashable, list[dict]] = OrderedDict()
        self._in_flight: dict[Hashable, asyncio.Future[list[dict]]] = {}
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._done)

    async def get_or_run(
        self,
        key: Hashable,
        run: Callable[[], Awaitable[list[dict]]],
        *,
        use_cache: bool,
        max_size: int,
    ) -> list[dict]:
        """Return the answer for ``key``: from the cache, from the identical search in flight, or
        from ``run()``. Each caller gets its own deep copy, so one caller's edits never reach
        another's. ``use_cache=False`` still shares searches in flight, it only skips the LRU.
        """
        if use_cache and key in self._done:
            self._done.move_to_end(key)
            self.stats.cache_hits += 1
            return copy.deepcopy(self._done[key])
        task = self._in_flight.get(key)
        if task is None:
            self.stats.sent += 1
            # A task of its own, so a caller that is cancelled (slime aborting a sample) never
            # cancels the search the other callers of the same query are waiting for.
            task = asyncio.ensure_future(run())
            self._in_flight[key] = task
            task.add_done_callback(functools.partial(self._finished, key, use_cache, max_size))
        else:
            self.stats.in_flight_hits += 1
        return copy.deepcopy(await asyncio.shield(task))

    def _finished(self, key: Hashable, use_cache: bool, max_size: int, task: asyncio.Future[list[dict]]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        # exception() also marks a failure as seen when every caller has gone away meanwhile.
        if task.cancelled() or task.exception() is not None or not use_cache or max_size <= 0:
            return
        self._done[key] = task.result()
        self._done.move_to_end(key)
        while len(self._done) > max_size:
            self._done.popitem(last=False)
