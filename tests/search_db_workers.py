"""Rollout-worker stand-ins for tests/test_search_db.py, each run in a process of its own (spawn).

A module of their own, importing only the search database: a spawned process imports the module
of its target, and the test module's imports (torch, FAISS, transformers) would cost seconds each.
"""

from __future__ import annotations

import asyncio

from search_r1_slime import search_db
from search_r1_slime.search_db import SearchDb
from search_r1_slime.settings import SearchR1Config

RECORDS_PER_PROCESS = 150


def record_many(path: str, worker: int, start) -> None:
    """One rollout worker: every search recorded through search_db.search, all on one event loop."""
    config = SearchR1Config.checked({"search_db": {"path": path}}).model_dump()

    async def answer(ledger) -> list[dict]:
        return [{"document": {"contents": f'"w{worker}"\n{i}'}} for i in range(3)]

    async def main() -> None:
        await asyncio.gather(*(search_db.search(f"w{worker} q{i}", config, answer) for i in range(RECORDS_PER_PROCESS)))

    start.wait()
    asyncio.run(main())


def claim_many(path: str, attempts: int, limit: int, taken, start) -> None:
    """Take paid requests of run-a as fast as possible; count those granted."""
    db = SearchDb(path)
    start.wait()
    for _ in range(attempts):
        if db.claim("run-a", limit)[0]:
            with taken.get_lock():
                taken.value += 1
