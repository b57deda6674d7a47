"""Micro-batching: one worker thread, batches bounded in size, each caller gets its own results."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from local_dense_retriever import batcher as batcher_module
from local_dense_retriever.batcher import MicroBatcher, Overloaded


class RecordingProcess:
    """process(queries, k): answers "<query>#<rank>" and records how it was called."""

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None):
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()
        self.busy = threading.Lock()
        self.overlapped = False

    def __call__(self, queries: list[str], k: int) -> list[list[str]]:
        if not self.busy.acquire(blocking=False):
            self.overlapped = True
            self.busy.acquire()
        try:
            self.threads.add(threading.get_ident())
            self.batches.append(list(queries))
            if self.fail_on in queries:
                raise RuntimeError(f"cannot search {self.fail_on!r}")
            time.sleep(self.delay_s)
            return [[f"{q}#{rank}" for rank in range(k)] for q in queries]
        finally:
            self.busy.release()


@pytest.fixture
def make_batcher():
    started = []

    def make(process, **kwargs) -> MicroBatcher:
        options = {"max_batch_size": 16, "max_wait_s": 0.05, "max_gap_s": 0.01, "max_pending_queries": 10_000, **kwargs}
        batcher = MicroBatcher(process, **options)
        batcher.start()
        started.append(batcher)
        return batcher

    yield make
    for batcher in started:
        batcher.stop()


async def test_many_concurrent_callers_each_get_exactly_their_own_results(make_batcher):
    process = RecordingProcess(delay_s=0.002)
    batcher = make_batcher(process)
    requests = [([f"q{i}a", f"q{i}b"][: 1 + i % 2], 1 + i % 4) for i in range(200)]
    answers = await asyncio.gather(*(batcher.submit(queries, k) for queries, k in requests))
    for (queries, k), answer in zip(requests, answers):
        assert answer == [[f"{q}#{rank}" for rank in range(k)] for q in queries]
    assert len(process.threads) == 1 and not process.overlapped
    assert len(process.batches) < 100  # gathered into batches, not one call per request
    assert max(len(b) for b in process.batches) <= 16


async def test_the_event_loop_is_never_blocked_by_processing(make_batcher):
    batcher = make_batcher(RecordingProcess(delay_s=0.3))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await batcher.submit(["slow"], 1)
    task.cancel()
    assert ticks >= 15  # the loop kept running while the worker was busy for 300 ms


async def test_a_request_larger_than_the_batch_limit_is_processed_in_bounded_chunks(make_batcher):
    process = RecordingProcess()
    batcher = make_batcher(process, max_batch_size=4)
    queries = [f"q{i}" for i in range(10)]
    assert await batcher.submit(queries, 1) == [[f"q{i}#0"] for i in range(10)]
    assert [len(b) for b in process.batches] == [4, 4, 2]


async def test_under_load_a_batch_waits_for_the_clients_just_answered(make_batcher):
    process = RecordingProcess(delay_s=0.1)
    batcher = make_batcher(process, max_wait_s=0.5)
    first = asyncio.create_task(batcher.submit(["a"], 1))
    await asyncio.sleep(0.03)  # "a" is being processed; "b" queues behind it
    second = asyncio.create_task(batcher.submit(["b"], 1))
    await first  # the client answered comes back 50 ms later, while "b"'s batch is still filling
    await asyncio.sleep(0.05)
    await asyncio.gather(second, batcher.submit(["c"], 1))
    assert process.batches == [["a"], ["b", "c"]]


async def test_an_idle_worker_serves_a_lone_query_at_once_and_a_burst_together(make_batcher):
    process = RecordingProcess()
    batcher = make_batcher(process, max_wait_s=2.0)
    started = time.monotonic()
    assert await batcher.submit(["alone"], 1) == [["alone#0"]]
    assert time.monotonic() - started < 0.5  # max_gap_s, not max_wait_s: nobody else was waiting
    await asyncio.gather(*(batcher.submit([f"q{i}"], 1) for i in range(5)))
    assert process.batches == [["alone"], ["q0", "q1", "q2", "q3", "q4"]]


async def test_a_batch_gathers_while_queries_keep_coming_and_runs_after_a_pause(make_batcher):
    process = RecordingProcess()
    batcher = make_batcher(process, max_wait_s=2.0, max_gap_s=0.1)

    async def at(delay_s: float, query: str):
        await asyncio.sleep(delay_s)
        return await batcher.submit([query], 1)

    await asyncio.gather(at(0, "q0"), at(0.03, "q1"), at(0.06, "q2"), at(0.4, "q3"))
    assert process.batches == [["q0", "q1", "q2"], ["q3"]]


async def test_a_failing_batch_fails_its_requests_and_the_worker_lives_on(make_batcher):
    batcher = make_batcher(RecordingProcess(fail_on="bad"), max_wait_s=0.05)
    results = await asyncio.gather(batcher.submit(["bad"], 1), batcher.submit(["fine"], 1), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "cannot search 'bad'" in str(r) for r in results)
    assert await batcher.submit(["after"], 2) == [["after#0", "after#1"]]


async def test_too_many_waiting_queries_are_refused(make_batcher):
    batcher = make_batcher(RecordingProcess(delay_s=0.2), max_pending_queries=3, max_batch_size=1)
    first = asyncio.create_task(batcher.submit(["a", "b", "c"], 1))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="3 queries are already waiting"):
        await batcher.submit(["d"], 1)
    assert len(await first) == 3
    assert await batcher.submit(["d"], 1) == [["d#0"]]  # admitted again once the backlog is gone


async def test_a_caller_answered_is_out_of_the_backlog_before_it_hears_back(make_batcher, monkeypatch):
    # The worker thread is held right after it hands out the answers, as a loaded machine may
    # deschedule it there; the caller answered submits again meanwhile.
    deliver, released = batcher_module._deliver, threading.Event()

    def deliver_then_stall(outcomes):
        deliver(outcomes)
        released.wait(10)

    monkeypatch.setattr(batcher_module, "_deliver", deliver_then_stall)
    batcher = make_batcher(RecordingProcess(), max_pending_queries=3)
    try:
        assert await batcher.submit(["a", "b", "c"], 1) == [["a#0"], ["b#0"], ["c#0"]]
        again = asyncio.create_task(batcher.submit(["d"], 1))
        await asyncio.sleep(0)  # the submission is admitted or refused before it first waits
        assert not again.done()  # admitted: its own answered queries no longer count as waiting
    finally:
        released.set()
    assert await again == [["d#0"]]


async def test_submitting_after_stop_is_an_error(make_batcher):
    batcher = make_batcher(RecordingProcess())
    batcher.stop()
    with pytest.raises(RuntimeError, match="not running"):
        await batcher.submit(["x"], 1)
