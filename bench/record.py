"""Benchmark: what recording every search costs (search_r1.search_db), at the GRPO load of bench/search_client.py.

The same load as bench/search_client.py (``--prompts`` x ``--samples`` samples, ``--turns`` turns,
arrivals spread over ``--spread-ms``) against one real retrieval server (demo corpus, MiniLM, CPU,
on loopback), every search through the plugin's own entry point ``generate_with_search.search``,
each run in a fresh event loop, side by side in one run:

* ``off``: no search_db (the default): the only addition is reading ``search_db.path``;
* ``record``: every search written to a fresh SQLite file (one row each, committed before the
  search returns) in a thread, off the event loop;
* ``off again``: as the first, to show the noise between two identical runs;
* ``replay``: the searches answered from the file just written (strict), the server unused.

A first, unshown pass warms the server. Then it prints the latency the row's write added to each
recorded search (the wait for the SQLite thread, queueing behind the other searches' rows
included), and the row write alone: ``--rows`` rows written one transaction each, in CPU and wall
time per row.

Target: every answer right (equal to the server's answer to the query asked alone), every search
recorded exactly once, every replayed answer equal; else it prints FAIL and exits 1.

Run from the repository root:  python bench/record.py
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.search_client import Servers, add_load_arguments, report, reference_answers, run, workload  # noqa: E402
from generate_with_search import resolve_config, search  # noqa: E402
from search_r1_slime.search_db import SearchDb  # noqa: E402


def plugin_search(db_path: Path | None, replay: bool = False):
    """``generate_with_search.search`` with ``search_r1.search_db`` set as named (None: off)."""

    configs: dict[tuple[str, ...], dict] = {}  # resolved once: the runs differ only in search_db

    async def searched(urls: str | list[str], query: str) -> list[str]:
        servers = (urls,) if isinstance(urls, str) else tuple(urls)
        if servers not in configs:
            search_r1 = {"topk": 3, "local": {"search_url": urls}}
            if db_path is not None:
                search_r1["search_db"] = {"path": str(db_path), "replay": "strict" if replay else "off"}
            configs[servers] = resolve_config(SimpleNamespace(search_r1=search_r1))
        return [item["document"]["contents"] for item in await search(query, configs[servers])]

    return searched


def time_record_awaits() -> list[float]:
    """Seconds each search waits for its row to be written (queueing behind others' rows included):
    the latency recording adds to a search under this load."""
    waits: list[float] = []
    record_one = SearchDb.record_one

    async def timed(self: SearchDb, row: tuple) -> None:
        started = time.perf_counter()
        try:
            await record_one(self, row)
        finally:
            waits.append(time.perf_counter() - started)

    SearchDb.record_one = timed
    return waits


def row_cost(path: Path, rows: int) -> tuple[float, float]:
    """Microseconds of wall and of CPU per row written, one transaction each, as search_db does."""
    db = SearchDb(path)
    db.check()
    results = [{"document": {"contents": '"Title"\n' + "a passage of some length " * 8}}] * 3
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(rows):
        db.record([("bench", "local", f"query {i}", 3, "sha256:0123456789abcdef", results, 0.01)])
    return (time.perf_counter() - wall) / rows * 1e6, (time.process_time() - cpu) / rows * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.record", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_arguments(parser)
    parser.add_argument("--rows", type=int, default=2000, help="rows written for the per-row cost")
    args = parser.parse_args(argv)
    print(f"load: {args.prompts} prompts x {args.samples} samples x {args.turns} turns, arrivals spread over "
          f"{args.spread_ms:.0f} ms; one real retrieval server (demo corpus, MiniLM, CPU) on loopback")
    turns = workload(args)
    record_waits = time_record_awaits()
    servers = Servers(1, args.workdir, args.server_threads)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "searches.sqlite"
        try:
            asyncio.run(servers.wait_ready())
            urls = servers.urls(1)
            expected = asyncio.run(reference_answers(urls[0], set().union(*turns)))
            # A first pass warms the server (its first batches are slower); its numbers are not shown.
            asyncio.run(run("warm-up", plugin_search(None), urls, servers, turns, expected, args))
            runs = [("off", plugin_search(None)), ("record", plugin_search(db)), ("off again", plugin_search(None)),
                    ("replay", plugin_search(db, replay=True))]
            outcomes = [asyncio.run(run(name, searched, urls, servers, turns, expected, args)) for name, searched in runs]
        finally:
            servers.stop()
        print(report(outcomes))
        with sqlite3.connect(db) as connection:
            recorded = connection.execute("SELECT count(*), count(DISTINCT query) FROM searches").fetchone()
        issued = outcomes[0].queries
        print(f"rows recorded: {recorded[0]} for {issued} searches ({recorded[1]} distinct queries)")
        print(f"latency recording added to a search (its row written, queue included): p50 "
              f"{1000 * np.percentile(record_waits, 50):.2f} ms, p99 {1000 * np.percentile(record_waits, 99):.2f} ms, "
              f"max {1000 * max(record_waits):.2f} ms ({len(record_waits)} searches)")
        wall_us, cpu_us = row_cost(Path(tmp) / "rows.sqlite", args.rows)
        print(f"one row written alone (one transaction, WAL, synchronous=NORMAL): {wall_us:.0f} us wall, {cpu_us:.0f} us CPU "
              f"(mean of {args.rows})")
    ok = all(o.wrong == 0 and o.failed == 0 for o in outcomes) and recorded[0] == issued
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
