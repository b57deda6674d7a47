"""Result reuse shared by both search backends: single flight plus a bounded LRU cache.

Why: in a GRPO step the n samples of one prompt usually issue the same query at about the same
time, and later steps repeat popular queries. Sending each of them to the retriever (or paying
serper.dev for each) is pure waste. ``SearchCache.get_or_run`` sends a query once while it is in
flight, hands every caller its own copy of the answer, and keeps finished answers in an LRU of
bounded size. Failures are never cached: the next caller tries again.

All state lives per event loop (``PerLoop``): slime keeps one long-lived loop, while tests make a
loop per test, and an asyncio future must never be awaited from another loop.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``factory()`` object per running event loop, dropped with its loop."""

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            item = self._items[loop] = self._factory()
        return item


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


def check_search_args(top_k: int, timeout: float, cache_size: int) -> None:
    """Reject configuration both backends share, with a message that names the key to fix."""
    if top_k < 1:
        raise ValueError(f"top_k (config key 'topk') must be at least 1, got {top_k}")
    if timeout <= 0:
        raise ValueError(f"timeout (config key 'search_timeout') must be positive, got {timeout}")
    if cache_size < 0:
        raise ValueError(f"cache_size must be 0 or more (0 keeps nothing), got {cache_size}")
