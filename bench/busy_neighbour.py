"""The retrieval server beside a busy neighbour, against upstream's way of serving, in one run.

    python bench/busy_neighbour.py [--duration 20] [--clients 256] [--passages 100000] [--neighbours 1] [--before DIR]

A retrieval server shares its node with training processes. Each server is loaded by ``--clients``
concurrent clients (one query per request, synthetic question-like queries, a flat index of
``--passages`` random MiniLM-sized vectors, the packaged MiniLM in fp32 on CPU) twice: alone, and
with ``--neighbours`` CPU-bound processes (``python -c "while True: pass"``) running beside it. The
servers:

1. upstream-like: each request encoded and searched on its own in FastAPI's thread pool
   (``bench/retrieval_server.py``'s stand-in);
2. ours, as ``retrieval_server`` starts by default (``--threads``: every core, waiting asleep);
3. with ``--before DIR``: ours from another checkout (e.g. main's before this change), the same way.

Prints queries/s, p50/p99 and errors for each, and the share of its queries/s each keeps beside
the neighbours. Target: ours keeps at least the share of the cores the neighbours leave,
(cores - neighbours) / cores, with 0 errors. The neighbours compete with the clients as well as
the server, as training would; run it on a machine with nothing else running and report
``uptime`` with the numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval_server import (  # noqa: E402
    free_port, load_server_process, prepare, queries, run_server_phase, serve_upstream_like, server_command,
)


def with_neighbours(count: int, measure):
    """``measure()`` while ``count`` CPU-bound processes run."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        return measure()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def upstream_like(args: argparse.Namespace, pool: list[str]) -> dict:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve_upstream_like", str(port), "--passages", str(args.passages), "--workdir", str(args.workdir)]
    return load_server_process(subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}), port, args, pool)


def ours_from(checkout: Path, args: argparse.Namespace, pool: list[str]) -> dict:
    """Our server as another checkout's code runs it: the same command line and files, with only
    that checkout on the path and the OpenMP variables as a user's shell leaves them (unset)."""
    port = free_port()
    cmd = server_command(prepare(args.workdir, args.passages), port, "--max_batch_size", str(args.max_batch_size))
    env = {key: value for key, value in os.environ.items() if not key.startswith("OMP_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(checkout))
    return load_server_process(subprocess.Popen(cmd, cwd=checkout, env=env), port, args, pool)


def line(name: str, result: dict) -> str:
    return (f"{name:34s} {result['qps']:7.1f} queries/s  p50 {result['p50'] * 1000:6.0f} ms  "
            f"p99 {result['p99'] * 1000:6.0f} ms  errors {result['errors']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured in each phase")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--passages", type=int, default=100_000, help="vectors in the flat index")
    p.add_argument("--neighbours", type=int, default=1, help="CPU-bound processes beside the server")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--max_batch_size", type=int, default=256)
    p.add_argument("--before", type=Path, default=None, help="another checkout (e.g. main's) whose server to measure the same way")
    p.add_argument("--workdir", type=Path, default=ROOT / "bench" / "_work")
    p.add_argument("--serve_upstream_like", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.serve_upstream_like:
        serve_upstream_like(prepare(args.workdir, args.passages), args.serve_upstream_like)
        return
    # run_server_phase's batching flags: the server's defaults but for the batch size.
    args.max_wait_ms, args.max_gap_ms = 100.0, 20.0
    config, pool = prepare(args.workdir, args.passages), queries(20_000)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.passages} passages, flat index, MiniLM fp32 on CPU ({cores} cores), {args.clients} clients x 1 query, "
          f"{args.neighbours} neighbour(s); load average before: {os.getloadavg()[0]:.1f}")
    servers = [("upstream-like", lambda: upstream_like(args, pool)), ("ours", lambda: run_server_phase(config, args, pool))]
    if args.before:
        servers.append((f"ours before ({args.before})", lambda: ours_from(args.before.resolve(), args, pool)))
    kept = {}
    for name, measure in servers:
        alone = measure()
        print(line(f"{name}, alone", alone), flush=True)
        beside = with_neighbours(args.neighbours, measure)
        print(line(f"{name}, {args.neighbours} neighbour(s)", beside), flush=True)
        kept[name] = (beside["qps"] / alone["qps"], alone["errors"] + beside["errors"])
        print(f"{'':34s} keeps {kept[name][0]:.0%} of its queries/s beside the neighbour(s)", flush=True)
    share = max(cores - args.neighbours, 0) / cores
    ours_kept, ours_errors = kept["ours"]
    verdict = "PASS" if ours_kept >= share and ours_errors == 0 else "FAIL"
    print(f"{verdict}: ours keeps {ours_kept:.0%} of its queries/s beside {args.neighbours} neighbour(s) (target >= {share:.0%}, "
          f"the cores left), {ours_errors} errors (target 0); upstream-like keeps {kept['upstream-like'][0]:.0%}; "
          f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
