"""Benchmark: the local search client under a GRPO-shaped load, next to upstream's pattern.

Load: ``--prompts`` prompts x ``--samples`` samples, all concurrent, for ``--turns`` turns. In the
first turn every sample issues its prompt's query (GRPO samples of one prompt start alike); in
later turns the samples of a prompt spread over ``--variants`` follow-up queries. Before each
search a sample "generates" for a random time up to ``--spread-ms``, so searches do not all
arrive in the same instant.

Server: the loopback ``/retrieve`` stand-in of the tests, charging ``--request-cost-ms`` per
request plus ``--query-cost-ms`` per query, one request at a time (like a real retriever with one
encoder and one index).

Clients, each in a fresh event loop against a fresh server:
* ``upstream``: a new HTTP session per search, one query per request (upstream's local_search);
* ``ours``: ``local_search_server.local_search`` with its defaults;
* ``ours, no cache``: the same with ``cache=False`` (batching and single flight only).

Every result is checked against the corpus. Exits 1 if any result is wrong, a search failed, or
ours sends fewer than 4x fewer HTTP requests than queries issued.

Run from the repository root:  python -m bench.search_client
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from local_search_server import local_search, local_search_stats
from search_r1_slime.http_client import close_shared_session
from tests.fakes.retriever import FakeRetriever, doc

TOP_K = 3
Search = Callable[[str, str], Awaitable[list[dict]]]


async def upstream_search(search_url: str, query: str) -> list[dict]:
    """Upstream's pattern: a session per search, one query per request, no retries."""
    async with aiohttp.ClientSession() as session:
        payload = {"queries": [query], "topk": TOP_K, "return_scores": False}
        async with session.post(search_url, json=payload, timeout=aiohttp.ClientTimeout(total=60)) as resp:
            resp.raise_for_status()
            body = await resp.json()
    return [{"document": {"contents": d["contents"]}} for d in body["result"][0]]


async def our_search(search_url: str, query: str) -> list[dict]:
    return await local_search(search_url, query, top_k=TOP_K, timeout=30)


async def our_search_without_cache(search_url: str, query: str) -> list[dict]:
    """Batching and single flight only: what the client saves before any answer is reused."""
    return await local_search(search_url, query, top_k=TOP_K, timeout=30, cache=False)


@dataclass
class Outcome:
    name: str
    queries: int
    distinct: int
    http_requests: int
    queries_at_server: int
    cache_hits: int | None
    in_flight_hits: int | None
    wrong: int
    failed: int
    wall_s: float
    p50_ms: float
    p95_ms: float


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


def corpus_for(turns: list[list[str]]) -> dict[str, list[dict]]:
    return {q: [doc(f"{q}/{i}", f"{q} title {i}", f"passage {i} answering {q}") for i in range(TOP_K)] for q in set().union(*turns)}


async def run(name: str, search: Search, turns: list[list[str]], args: argparse.Namespace) -> Outcome:
    corpus = corpus_for(turns)
    rng = random.Random(args.seed)
    delays = [[rng.uniform(0, args.spread_ms / 1000) for _ in queries] for queries in turns]
    latencies: list[float] = []
    wrong = failed = 0

    async def sample(index: int, url: str) -> None:
        nonlocal wrong, failed
        for turn, queries in enumerate(turns):
            await asyncio.sleep(delays[turn][index])
            query = queries[index]
            started = time.monotonic()
            try:
                result = await search(url, query)
            except Exception:  # noqa: BLE001 - counted and reported, the load goes on
                failed += 1
                continue
            latencies.append(time.monotonic() - started)
            want = [{"document": {"contents": d["contents"]}} for d in corpus[query]]
            wrong += result != want

    server = FakeRetriever(corpus, request_cost_s=args.request_cost_ms / 1000, query_cost_s=args.query_cost_ms / 1000)
    async with server:
        started = time.monotonic()
        await asyncio.gather(*(sample(i, server.search_url) for i in range(len(turns[0]))))
        wall = time.monotonic() - started
    stats = None if search is upstream_search else local_search_stats()
    await close_shared_session()
    latencies.sort()
    return Outcome(
        name=name,
        queries=sum(len(q) for q in turns),
        distinct=len(corpus),
        http_requests=len(server.requests),
        queries_at_server=len(server.queries_received),
        cache_hits=stats.cache_hits if stats else None,
        in_flight_hits=stats.in_flight_hits if stats else None,
        wrong=wrong,
        failed=failed,
        wall_s=wall,
        p50_ms=1000 * statistics.median(latencies) if latencies else float("nan"),
        p95_ms=1000 * latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
    )


def report(outcomes: list[Outcome]) -> str:
    rows = [
        ("queries issued", lambda o: o.queries),
        ("distinct queries", lambda o: o.distinct),
        ("HTTP requests to retriever", lambda o: o.http_requests),
        ("queries the retriever ran", lambda o: o.queries_at_server),
        ("queries per HTTP request", lambda o: f"{o.queries / max(o.http_requests, 1):.1f}"),
        ("cache hits", lambda o: "-" if o.cache_hits is None else o.cache_hits),
        ("single-flight hits", lambda o: "-" if o.in_flight_hits is None else o.in_flight_hits),
        ("wrong results", lambda o: o.wrong),
        ("failed searches", lambda o: o.failed),
        ("wall time (s)", lambda o: f"{o.wall_s:.2f}"),
        ("search latency p50 (ms)", lambda o: f"{o.p50_ms:.0f}"),
        ("search latency p95 (ms)", lambda o: f"{o.p95_ms:.0f}"),
    ]
    lines = [f"{'':28}" + "".join(f"{o.name:>16}" for o in outcomes)]
    lines += [f"{label:28}" + "".join(f"{str(value(o)):>16}" for o in outcomes) for label, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (GRPO n)")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--variants", type=int, default=4, help="distinct follow-up queries per prompt after turn 1")
    parser.add_argument("--spread-ms", type=float, default=200.0, help="generation time before a search: uniform 0..this")
    parser.add_argument("--request-cost-ms", type=float, default=10.0)
    parser.add_argument("--query-cost-ms", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    turns = workload(args)
    print(
        f"load: {args.prompts} prompts x {args.samples} samples x {args.turns} turns, arrivals spread over "
        f"{args.spread_ms:.0f} ms; server cost {args.request_cost_ms} ms/request + {args.query_cost_ms} ms/query, serial"
    )
    clients = (("upstream", upstream_search), ("ours, no cache", our_search_without_cache), ("ours", our_search))
    outcomes = [asyncio.run(run(name, search, turns, args)) for name, search in clients]
    print(report(outcomes))
    ours = outcomes[-1]
    reduction = ours.queries / max(ours.http_requests, 1)
    print(f"ours: {reduction:.1f}x fewer HTTP requests than queries issued (target >= 4x)")
    ok = all(o.wrong == 0 and o.failed == 0 for o in outcomes) and reduction >= 4
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
