"""Dynamic micro-batching: many concurrent requests, one worker thread, one batch at a time.

On a GPU, encoding 256 queries costs little more than encoding one; on any device FAISS scans the
index once per batch (one matrix product); and neither the encoder nor a GPU FAISS index may be
called from two threads at once. So requests queue here, and a single worker thread takes everything waiting (up to
``max_batch_size`` queries), runs it as one batch and hands each request exactly its own slice of
the results. The event loop only enqueues and awaits, so it never blocks on encoding or search.

A batch keeps gathering while queries keep arriving (each within ``max_gap_s`` of the last),
up to ``max_batch_size`` queries and ``max_wait_s`` in all. Under load (queries were already
waiting when the worker finished its last batch) it also waits for the first new arrival: the
clients just answered are about to send their next queries. Without that, N busy clients split
into two halves of N/2 that take turns (one is encoded while the other's answers travel); full
batches scan the index once for all and keep HTTP work from competing with the encoder for the
CPU (bench/retrieval_server.py on 2 cores: 10-20% more queries/s, batches of ~250 instead of 128).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

Result = TypeVar("Result")
# process(queries, k) -> one result per query; it may return more than a request's k items
# per query, and each request keeps the first k of its own.
ProcessFn = Callable[[list[str], int], Sequence[Sequence[Any]]]


class Overloaded(Exception):
    """More queries are waiting than the batcher admits; the caller should retry later."""


@dataclass
class _Job:
    queries: list[str]
    k: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)


_STOP = object()


Outcome = tuple[asyncio.Future, Any, "BaseException | None"]


def _resolve(outcomes: list[Outcome]) -> None:
    # Runs on the event loop; a client may have gone away (cancelled future) meanwhile.
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _deliver(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    """Resolve the jobs' futures on their loops: one wake-up per loop, not one per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for job, result, error in outcomes:
        by_loop.setdefault(job.loop, []).append((job.future, result, error))
    for loop, loop_outcomes in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, loop_outcomes)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


class MicroBatcher(Generic[Result]):
    def __init__(
        self, process: ProcessFn, *, max_batch_size: int, max_wait_s: float, max_gap_s: float, max_pending_queries: int
    ):
        self._process = process
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_gap_s = max_gap_s
        self.max_pending_queries = max_pending_queries
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending_queries = 0
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Read by /health (plain ints: a slightly stale value there is harmless).
        self.batches_run = 0
        self.queries_run = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retrieval-batch-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in progress, fail what still waits, and join the worker."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._thread = None

    async def submit(self, queries: list[str], k: int) -> list[list[Result]]:
        """Queue ``queries`` and wait for their top-``k`` results (one list per query)."""
        if self._thread is None:
            raise RuntimeError("the batch worker is not running")
        with self._pending_lock:
            if self._pending_queries + len(queries) > self.max_pending_queries:
                raise Overloaded(f"{self._pending_queries} queries are already waiting (limit {self.max_pending_queries})")
            self._pending_queries += len(queries)
        loop = asyncio.get_running_loop()
        job = _Job(list(queries), k, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    # ---- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        carried: deque[_Job] = deque()  # a job that did not fit into the previous batch
        while True:
            free_since = time.monotonic()
            first = carried.popleft() if carried else self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._gather(first, carried, free_since)
            self._run_batch(batch)
            if stop:
                break
        self._fail_waiting(carried)

    def _gather(self, first: _Job, carried: deque[_Job], free_since: float) -> tuple[list[_Job], bool]:
        batch, size = [first], len(first.queries)
        give_up = time.monotonic() + self.max_wait_s
        # Under load, wait (up to give_up) for the first new arrival; otherwise for the next one.
        pause_ends = give_up if first.enqueued_at <= free_since else first.enqueued_at + self.max_gap_s
        while size < self.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, min(give_up, pause_ends) - time.monotonic()))
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            if size + len(job.queries) > self.max_batch_size:
                carried.append(job)
                break
            batch.append(job)
            size += len(job.queries)
            if job.enqueued_at > free_since:
                pause_ends = job.enqueued_at + self.max_gap_s
        return batch, False

    def _run_batch(self, batch: list[_Job]) -> None:
        # Skip requests whose client already gave up (a read of a flag set on the loop's thread;
        # at worst a just-cancelled request is computed for nothing).
        live = [job for job in batch if not job.future.cancelled()]
        queries = [q for job in live for q in job.queries]
        error: BaseException | None = None
        results: list = []
        if queries:
            try:
                k = max(job.k for job in live)
                # A single request may exceed max_batch_size; bound each model call anyway.
                for start in range(0, len(queries), self.max_batch_size):
                    results.extend(self._process(queries[start : start + self.max_batch_size], k))
                self.batches_run += 1
                self.queries_run += len(queries)
            except Exception as exc:  # every request of the batch learns why, the worker lives on
                logger.exception("retrieval batch of %d queries failed", len(queries))
                error = exc
        outcomes, offset = [], 0
        for job in live:
            own = None if error else [hits[: job.k] for hits in results[offset : offset + len(job.queries)]]
            offset += len(job.queries)
            outcomes.append((job, own, error))
        # Out of the backlog before the callers hear back: a caller answered may submit again at
        # once, and must not find its own answered queries still counted against the limit.
        with self._pending_lock:
            self._pending_queries -= sum(len(job.queries) for job in batch)
        _deliver(outcomes)

    def _fail_waiting(self, carried: deque[_Job]) -> None:
        leftovers = list(carried)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                leftovers.append(job)
        _deliver([(job, None, RuntimeError("the retrieval server is shutting down")) for job in leftovers])
