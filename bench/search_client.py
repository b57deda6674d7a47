"""Benchmark: the local search client under a GRPO-shaped load, against real retrieval servers.

Load: ``--prompts`` prompts x ``--samples`` samples, all concurrent, for ``--turns`` turns. In the
first turn every sample issues its prompt's query (GRPO samples of one prompt start alike); in
later turns the samples of a prompt spread over ``--variants`` follow-up queries. Before each
search a sample "generates" for a random time up to ``--spread-ms``, so searches do not all
arrive in the same instant.

Servers: real ``local_dense_retriever`` servers, each in its own process on a loopback port, over
the demo corpus (326 passages) and the packaged MiniLM on CPU (the index is built under
``bench/_work/demo`` on first run). Every answer is checked against the answer one server gives
to the query asked alone, before the load.

1. Clients, against one server, each in a fresh event loop:
   * ``upstream``: a new HTTP session per search, one query per request (upstream's local_search);
   * ``ours``: ``local_search_server.local_search`` with its defaults;
   * ``ours, no cache``: the same with ``cache=False`` (batching and single flight only).
2. Scale-out: ``ours`` with 1, 2 ... ``--servers`` URLs in ``search_url``: how the queries spread
   (each server's ``/health`` ``served`` counters); then the same with ``--servers`` servers of
   which one is killed (SIGKILL: a node going away) once ``--kill-at`` of the searches are done.

Target: every result right, no search failed, ours sending at least 4x fewer HTTP requests than
queries issued, and every server listed getting work while all are up; else it prints FAIL and
exits 1.

Run from the repository root:  python bench/search_client.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval_server import free_port, start_server, wait_ready  # noqa: E402
from local_search_server import local_search, local_search_stats  # noqa: E402
from search_r1_slime.demo import prepare  # noqa: E402
from search_r1_slime.http_client import close_shared_session  # noqa: E402

TOP_K = 3
# (search_url, query) -> the passages' contents, best first.
Search = Callable[[str | list[str], str], Awaitable[list[str]]]


async def upstream_search(search_url: str | list[str], query: str) -> list[str]:
    """Upstream's pattern: a session per search, one query per request, no retries."""
    async with aiohttp.ClientSession() as session:
        payload = {"queries": [query], "topk": TOP_K, "return_scores": False}
        async with session.post(search_url, json=payload, timeout=aiohttp.ClientTimeout(total=60)) as resp:
            resp.raise_for_status()
            body = await resp.json()
    return [d["contents"] for d in body["result"][0]]


async def our_search(search_url: str | list[str], query: str) -> list[str]:
    return [item["document"]["contents"] for item in await local_search(search_url, query, top_k=TOP_K, timeout=30)]


async def our_search_without_cache(search_url: str | list[str], query: str) -> list[str]:
    """Batching and single flight only: what the client saves before any answer is reused."""
    result = await local_search(search_url, query, top_k=TOP_K, timeout=30, cache=False)
    return [item["document"]["contents"] for item in result]


class Servers:
    """Retrieval server processes on loopback ports, started together and read through ``/health``."""

    def __init__(self, count: int, workdir: Path, threads: int):
        self.config = prepare(workdir, show_progress=False)
        self.ports = [free_port() for _ in range(count)]
        # Torch threads per server: on one machine the servers share its cores, where on separate
        # nodes each would have its own; more threads than cores only adds contention.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.processes = [start_server(self.config, port) for port in self.ports]

    def urls(self, count: int) -> list[str]:
        return [f"http://127.0.0.1:{port}/retrieve" for port in self.ports[:count]]

    async def wait_ready(self) -> None:
        async with aiohttp.ClientSession() as session:
            for port, process in zip(self.ports, self.processes):
                await wait_ready(session, f"http://127.0.0.1:{port}", process)

    async def served(self) -> list[int]:
        """Queries each server has run so far (-1 for one that is gone)."""
        counts = []
        async with aiohttp.ClientSession() as session:
            for port in self.ports:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                        counts.append((await resp.json())["served"]["queries"])
                except aiohttp.ClientError:
                    counts.append(-1)
        return counts

    def kill(self, i: int) -> None:
        self.processes[i].kill()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(30)


@dataclass
class Outcome:
    name: str
    queries: int
    distinct: int
    http_requests: int
    resent: int | None
    per_server: list[int]
    killed: int | None
    cache_hits: int | None
    in_flight_hits: int | None
    wrong: int
    failed: int
    wall_s: float
    latencies_s: list[float] = field(repr=False)

    def latency_ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")


def workload(args: argparse.Namespace) -> list[list[str]]:
    """The query of each sample (prompt-major) in each turn."""
    turns = []
    for turn in range(args.turns):
        queries = []
        for prompt in range(args.prompts):
            for sample in range(args.samples):
                variant = "" if turn == 0 else f" follow-up {sample % args.variants}"
                queries.append(f"prompt {prompt} turn {turn}{variant}")
        turns.append(queries)
    return turns


async def reference_answers(url: str, queries: set[str]) -> dict[str, list[str]]:
    """Each query asked alone, before any load: what every answer under load must equal."""
    async with aiohttp.ClientSession() as session:
        answers = {}
        for query in sorted(queries):
            async with session.post(url, json={"queries": [query], "topk": TOP_K}) as resp:
                answers[query] = [d["contents"] for d in (await resp.json())["result"][0]]
        return answers


async def run(name: str, search: Search, urls: list[str], servers: Servers, turns: list[list[str]], expected: dict[str, list[str]],
              args: argparse.Namespace, kill: int | None = None) -> Outcome:
    rng = random.Random(args.seed)
    delays = [[rng.uniform(0, args.spread_ms / 1000) for _ in queries] for queries in turns]
    total = sum(len(q) for q in turns)
    latencies: list[float] = []
    wrong = failed = 0
    killed_after: int | None = None  # queries the killed server had run when it was killed
    before = await servers.served()
    target = urls[0] if search is upstream_search else urls

    async def sample(index: int) -> None:
        nonlocal wrong, failed, killed_after
        for turn, queries in enumerate(turns):
            await asyncio.sleep(delays[turn][index])
            query = queries[index]
            started = time.monotonic()
            try:
                result = await search(target, query)
            except Exception:  # noqa: BLE001 - counted and reported, the load goes on
                failed += 1
            else:
                latencies.append(time.monotonic() - started)
                wrong += result != expected[query]
            if kill is not None and len(latencies) + failed == int(total * args.kill_at):
                killed_after = (await servers.served())[kill]
                servers.kill(kill)

    started = time.monotonic()
    await asyncio.gather(*(sample(i) for i in range(len(turns[0]))))
    wall = time.monotonic() - started
    after = await servers.served()
    stats = None if search is upstream_search else local_search_stats()
    await close_shared_session()
    return Outcome(
        name=name,
        queries=total,
        distinct=len(set().union(*turns)),
        http_requests=total if stats is None else stats.http_requests,  # upstream: one request per search
        resent=None if stats is None else stats.http_requests - stats.batches,  # retries and failovers
        per_server=[(b if b >= 0 else killed_after) - a for a, b in zip(before, after)][: len(urls)],
        killed=kill,
        cache_hits=stats.cache_hits if stats else None,
        in_flight_hits=stats.in_flight_hits if stats else None,
        wrong=wrong,
        failed=failed,
        wall_s=wall,
        latencies_s=latencies,
    )


def report(outcomes: list[Outcome], width: int = 16) -> str:
    rows = [
        ("queries issued", lambda o: o.queries),
        ("distinct queries", lambda o: o.distinct),
        ("HTTP requests to retrievers", lambda o: o.http_requests),
        ("requests re-sent (failover)", lambda o: "-" if o.resent is None else o.resent),
        ("queries each server ran", lambda o: "/".join(f"{n}{'x' * (i == o.killed)}" for i, n in enumerate(o.per_server))),
        ("queries per HTTP request", lambda o: f"{o.queries / max(o.http_requests, 1):.1f}"),
        ("cache hits", lambda o: "-" if o.cache_hits is None else o.cache_hits),
        ("single-flight hits", lambda o: "-" if o.in_flight_hits is None else o.in_flight_hits),
        ("wrong results", lambda o: o.wrong),
        ("failed searches", lambda o: o.failed),
        ("wall time (s)", lambda o: f"{o.wall_s:.2f}"),
        ("search latency p50 (ms)", lambda o: f"{o.latency_ms(50):.0f}"),
        ("search latency p99 (ms)", lambda o: f"{o.latency_ms(99):.0f}"),
        ("search latency max (ms)", lambda o: f"{o.latency_ms(100):.0f}"),
    ]
    lines = [f"{'':28}" + "".join(f"{o.name:>{width}}" for o in outcomes)]
    lines += [f"{label:28}" + "".join(f"{str(value(o)):>{width}}" for o in outcomes) for label, value in rows]
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> bool:
    """Each run in a fresh event loop: the client's cache and counters live per loop."""
    turns = workload(args)
    servers = Servers(args.servers, args.workdir, args.server_threads)
    try:
        asyncio.run(servers.wait_ready())
        urls = servers.urls(args.servers)
        expected = asyncio.run(reference_answers(urls[0], set().union(*turns)))

        def measured(name: str, search: Search, count: int, kill: int | None = None) -> Outcome:
            return asyncio.run(run(name, search, urls[:count], servers, turns, expected, args, kill))

        clients = (("upstream", upstream_search), ("ours, no cache", our_search_without_cache), ("ours", our_search))
        compared = [measured(name, search, 1) for name, search in clients]
        print("1. clients, one server\n" + report(compared))
        ours = compared[-1]
        reduction = ours.queries / max(ours.http_requests, 1)
        print(f"ours: {reduction:.1f}x fewer HTTP requests than queries issued (target >= 4x)\n")

        spread = [measured(f"{n} server{'s' * (n > 1)}", our_search, n) for n in range(1, args.servers + 1)]
        killed = measured(f"{args.servers}, 1 killed", our_search, args.servers, kill=args.servers - 1)
        print(f"2. scale-out: ours over several servers; in the last column the last server is killed (SIGKILL) once "
              f"{args.kill_at:.0%} of the searches are done (x: the queries it ran until then)\n" + report(spread + [killed], 18))
        all_busy = all(n > 0 for o in spread for n in o.per_server)
        print(f"every listed server got queries while all were up: {all_busy}")
        return all(o.wrong == 0 and o.failed == 0 for o in compared + spread + [killed]) and reduction >= 4 and all_busy
    finally:
        servers.stop()


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The GRPO-shaped load's flags (also bench/record.py's)."""
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (GRPO n)")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--variants", type=int, default=4, help="distinct follow-up queries per prompt after turn 1")
    parser.add_argument("--spread-ms", type=float, default=200.0, help="generation time before a search: uniform 0..this")
    parser.add_argument("--server-threads", type=int, default=1, help="torch threads of each server process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "_work" / "demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search_client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_arguments(parser)
    parser.add_argument("--servers", type=int, default=3, help="the most retrieval servers behind the client")
    parser.add_argument("--kill-at", type=float, default=0.6, help="fraction of the searches done when a server is killed")
    args = parser.parse_args(argv)
    if args.servers < 2:
        parser.error("--servers must be at least 2: the last run kills one of them")
    print(
        f"load: {args.prompts} prompts x {args.samples} samples x {args.turns} turns, arrivals spread over "
        f"{args.spread_ms:.0f} ms; real retrieval servers (demo corpus, MiniLM, CPU) on loopback"
    )
    ok = measure(args)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
