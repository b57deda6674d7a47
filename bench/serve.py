"""Benchmark: the retrieval server on Ray Serve beside the standalone server, in one run.

Server: the demo corpus (326 passages) with the packaged MiniLM on CPU, the same ``ServerConfig``
for both (request log off on both; Serve's access log off too). Standalone: ``python -m
local_dense_retriever.retrieval_server`` in its own process. Serve: a local Ray cluster on
loopback (no dashboard), ``local_dense_retriever.serve_app`` with one, then two replicas of
``--replica-cpus`` CPUs each, reached through Serve's HTTP proxy. The standalone server runs with
as many encoder threads as one replica (``OMP_NUM_THREADS``, which Ray sets to an actor's CPUs).

Measured, each against the same load:
* throughput: ``--clients`` closed-loop clients, each sending ``/retrieve`` requests of
  ``--queries`` queries (distinct questions) for ``--seconds``: queries/s, request p50/p99;
* the proxy's cost per request: ``--pings`` sequential ``GET /health`` (no search) through the
  proxy minus the same straight to the standalone server, median;
* a replica killed (``ray.kill``) in the middle of a GRPO-shaped load of 256 searches through the
  plugin's client (``local_search_server.local_search``, 8 queries a request): searches lost or
  wrong, and the seconds until Serve runs two replicas again;
* autoscaling (min 1, max 2, ``target_ongoing_requests`` 2): the replica count, every second,
  under load and after it;
* page sharing: each replica's mapping of the index, RSS against PSS (its share).

Target: no search lost or wrong across the kill; autoscaling reaches 2 replicas under load and
returns to 1 after; the replicas' PSS of the index add up to at most one file (one copy in the
page cache). Throughput and the proxy's cost are reported, not targeted: on a shared 2-core
machine they say what the proxy costs, not what a GPU node gives.

Run from the repository root:  python -m bench.serve [--seconds 15] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "_work" / "serve"
APP = "retrieval"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def questions() -> list[str]:
    from search_r1_slime.demo import DEMO_CORPUS

    titles = [json.loads(line)["contents"].split("\n", 1)[0].strip('"') for line in DEMO_CORPUS.read_text(encoding="utf-8").splitlines()]
    return [f"What is known about {title}?" for title in titles]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def throughput(base: str, clients: int, queries: int, seconds: float) -> dict:
    """Closed-loop clients for ``seconds``: queries/s and request latencies."""
    import aiohttp

    pool = questions()
    latencies: list[float] = []
    failures = 0
    stop_at = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal failures
        i = n
        while time.monotonic() < stop_at:
            batch = [pool[(i + j) % len(pool)] for j in range(queries)]
            i += clients
            started = time.perf_counter()
            async with session.post(f"{base}/retrieve", json={"queries": batch, "topk": 3}) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
                    continue
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(session, n) for n in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "qps": len(latencies) * queries / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "failed_requests": failures,
    }


async def ping_ms(base: str, pings: int) -> float:
    import aiohttp

    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(pings):
            started = time.perf_counter()
            async with session.get(f"{base}/health") as response:
                await response.read()
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def start_standalone(config, port: int, threads: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "local_dense_retriever.retrieval_server", "--index_path", config.index_path,
        "--corpus_path", config.corpus_path, "--corpus_arrow_path", config.corpus_arrow_path,
        "--retriever_name", config.retriever_name, "--retriever_model", config.retriever_model, "--device", "cpu",
        "--port", str(port), "--no_request_log", "--log_level", "warning",
    ]
    # The threads a replica of --replica-cpus gets (Ray sets OMP_NUM_THREADS to an actor's num_cpus):
    # the same encoder on the same cores, with or without Serve.
    server = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)})
    wait_ready(f"http://127.0.0.1:{port}", 300)
    return server


def wait_ready(base: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"{base} was not ready within {timeout_s} s")


def replicas_running() -> int:
    from local_dense_retriever.serve_app import running_replicas

    return running_replicas(APP)


def replica_names() -> set[str]:
    from local_dense_retriever.serve_app import replica_actor_names

    return replica_actor_names(APP)


def deploy(config, args: argparse.Namespace, **options) -> None:
    from ray import serve

    from local_dense_retriever.serve_app import RetrievalDeployment

    deployment = RetrievalDeployment.options(ray_actor_options={"num_cpus": args.replica_cpus}, **options)
    serve.run(deployment.bind(config), name=APP, route_prefix="/",
              logging_config={"enable_access_log": False, "log_level": "WARNING"})
    want = options.get("num_replicas") or options["autoscaling_config"]["min_replicas"]
    deadline = time.monotonic() + 300
    while replicas_running() != want:
        if time.monotonic() > deadline:
            raise SystemExit(f"{want} replicas did not run within 300 s")
        time.sleep(0.5)


def index_pages(index_path: str) -> list[tuple[int, int]]:
    """(RSS, PSS) of each replica's mapping of the index file."""
    import psutil

    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] and f"ServeReplica:{APP}:" in process.info["name"]:
            found += [(m.rss, m.pss) for m in process.memory_maps() if m.path == os.path.realpath(index_path)]
    return found


async def answers(base: str, pool: list[str]) -> dict[str, set[str]]:
    """Each query's passages (contents) as ``base`` answers it, in requests of 64 queries."""
    import aiohttp

    found = {}
    async with aiohttp.ClientSession() as session:
        for start in range(0, len(pool), 64):
            batch = pool[start : start + 64]
            async with session.post(f"{base}/retrieve", json={"queries": batch, "topk": 3}) as response:
                result = (await response.json())["result"]
            found.update((q, {doc["contents"] for doc in docs}) for q, docs in zip(batch, result))
    return found


async def kill_under_load(base: str, expected: dict[str, set[str]]) -> dict:
    import ray

    from local_search_server import local_search
    from search_r1_slime.http_client import close_shared_session

    pool = list(expected)
    victim = sorted(replica_names())[0]
    results: list = []
    try:
        for turn in range(4):
            searches = [asyncio.ensure_future(local_search(f"{base}/retrieve", q, top_k=3, timeout=120, max_queries_per_request=8))
                        for q in pool[turn * 64 : (turn + 1) * 64]]
            if turn == 1:
                await asyncio.sleep(0.05)
                ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
                killed_at = time.monotonic()
            results += await asyncio.gather(*searches, return_exceptions=True)
    finally:
        await close_shared_session()
    while not (replicas_running() == 2 and victim not in replica_names() and len(replica_names()) == 2):
        await asyncio.sleep(0.2)
    recovered_s = time.monotonic() - killed_at
    # Right: the standalone server's passages (as a set: batches of other shapes may swap near ties).
    wrong = sum(1 for q, r in zip(pool, results) if isinstance(r, Exception) or {hit["document"]["contents"] for hit in r} != expected[q])
    lost = sum(1 for r in results if isinstance(r, Exception))
    return {"searches": len(results), "lost": lost, "wrong_or_lost": wrong, "recovered_s": recovered_s}


async def autoscaling(base: str, args: argparse.Namespace) -> dict:
    """The replica count every second: under load until 2 run (or ``--scale-timeout``), then idle."""
    timeline: list[tuple[float, int]] = []
    started = time.monotonic()
    load = asyncio.ensure_future(throughput(base, args.clients, args.queries, args.scale_timeout))
    up_s = down_s = None
    while not load.done():
        count = await asyncio.to_thread(replicas_running)
        timeline.append((time.monotonic() - started, count))
        if count == 2 and up_s is None:
            up_s = timeline[-1][0]
            load.cancel()
            break
        await asyncio.sleep(1)
    try:
        await load
    except asyncio.CancelledError:
        pass
    idle_from = time.monotonic()
    while time.monotonic() - idle_from < args.scale_timeout:
        count = await asyncio.to_thread(replicas_running)
        timeline.append((time.monotonic() - started, count))
        if count == 1:
            down_s = time.monotonic() - idle_from
            break
        await asyncio.sleep(1)
    changes = [timeline[0]] + [b for a, b in zip(timeline, timeline[1:]) if a[1] != b[1]]
    return {"up_after_s": up_s, "down_after_idle_s": down_s, "changes": [f"{t:.0f}s:{n}" for t, n in changes]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="length of each throughput run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    parser.add_argument("--queries", type=int, default=8, help="queries per request")
    parser.add_argument("--pings", type=int, default=200, help="sequential GET /health for the proxy's cost")
    parser.add_argument("--replica-cpus", type=float, default=1, help="num_cpus of each replica")
    parser.add_argument("--scale-timeout", type=float, default=120, help="longest wait for each autoscaling step")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

    import ray
    from ray import serve

    from local_dense_retriever.serve_app import config_args, server_config
    from search_r1_slime import demo

    config = server_config(config_args(demo.prepare(WORK, show_progress=False)) | {"request_log": False})
    rows: dict[str, dict] = {}

    port = free_port()
    standalone = start_standalone(config, port, max(1, int(args.replica_cpus)))
    try:
        direct = f"http://127.0.0.1:{port}"
        asyncio.run(throughput(direct, args.clients, args.queries, 3))  # warm-up
        rows["standalone"] = asyncio.run(throughput(direct, args.clients, args.queries, args.seconds))
        direct_ping = asyncio.run(ping_ms(direct, args.pings))
        expected = asyncio.run(answers(direct, questions()[:256]))
    finally:
        standalone.terminate()
        standalone.wait()

    ray_started = time.monotonic()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    proxy_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
    ray_start_s = time.monotonic() - ray_started
    base = f"http://127.0.0.1:{proxy_port}"
    try:
        for replicas in (1, 2):
            deployed = time.monotonic()
            deploy(config, args, num_replicas=replicas)
            print(f"serve: {replicas} replica(s) running {time.monotonic() - deployed:.0f} s after serve.run", flush=True)
            asyncio.run(throughput(base, args.clients, args.queries, 3))
            rows[f"serve, {replicas} replica(s)"] = asyncio.run(throughput(base, args.clients, args.queries, args.seconds))
        proxy_ping = asyncio.run(ping_ms(base, args.pings))
        pages = index_pages(config.index_path)
        killed = asyncio.run(kill_under_load(base, expected))
        deploy(config, args, autoscaling_config={
            "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
            "upscale_delay_s": 3, "downscale_delay_s": 15, "metrics_interval_s": 1, "look_back_period_s": 5})
        scaling = asyncio.run(autoscaling(base, args))
    finally:
        serve.shutdown()
        ray.shutdown()

    file_bytes = -(-os.path.getsize(config.index_path) // 4096) * 4096
    print(f"\nload: {args.clients} clients x {args.queries} queries/request, {args.seconds:g} s each; replicas of "
          f"{args.replica_cpus:g} CPU; Ray start + serve.start: {ray_start_s:.0f} s")
    print(f"{'server':<22}{'queries/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
    for name, row in rows.items():
        print(f"{name:<22}{row['qps']:>10.0f}{row['p50_ms']:>9.0f}{row['p99_ms']:>9.0f}{row['failed_requests']:>8}")
    print(f"proxy's cost per request (GET /health, median of {args.pings}): {proxy_ping - direct_ping:.2f} ms "
          f"({proxy_ping:.2f} through Serve, {direct_ping:.2f} straight)")
    print(f"replica killed under 256 plugin searches: {killed['lost']} lost, {killed['wrong_or_lost']} wrong or lost, "
          f"two replicas again {killed['recovered_s']:.1f} s after ray.kill")
    up, down = (f"{s:.0f} s" if s is not None else "never" for s in (scaling["up_after_s"], scaling["down_after_idle_s"]))
    print(f"autoscaling 1 -> 2 after {up} of load, 2 -> 1 after {down} idle; "
          f"replica count over time: {' '.join(scaling['changes'])}")
    print(f"index mapping of each replica (file {file_bytes} B): " + ", ".join(f"RSS {r} B / PSS {p} B" for r, p in pages))
    shared = len(pages) == 2 and all(r == file_bytes for r, _ in pages) and sum(p for _, p in pages) <= file_bytes
    ok = killed["wrong_or_lost"] == 0 and scaling["up_after_s"] is not None and scaling["down_after_idle_s"] is not None and shared
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
