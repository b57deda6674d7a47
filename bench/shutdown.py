"""How long the retrieval server takes to exit after Ctrl-C (SIGINT) or SIGTERM while it loads.

    python bench/shutdown.py [--runs 3] [--load_s 15] [--signal_at_s 3] [--baseline DIR]

The server's command line runs in its own process with a load that takes ``--load_s`` seconds
(tests/fakes/slow_load_server.py, a stand-in for wiki-18's minutes: it waits, as a load reading
files mostly does) and gets the signal ``--signal_at_s`` seconds after the app started, and with
it the load. Printed per signal, as a range over the runs: seconds from the signal to the
process's exit, and its exit status. ``--baseline DIR`` measures another checkout the same way, e.g. main's:
``git archive main | (mkdir -p /tmp/server_main && tar -x -C /tmp/server_main)``.

Target: exit within 2 s of the signal.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.server_limits import WORK, span  # noqa: E402
from search_r1_slime.demo import prepare  # noqa: E402

STAND_IN = ROOT / "tests" / "fakes" / "slow_load_server.py"
TARGET_S = 2.0


def exit_after_signal(tree: Path, sig: signal.Signals, load_s: float, signal_at_s: float) -> tuple[float, int]:
    config = prepare(WORK, show_progress=False)
    # Run as a script, so that local_dense_retriever comes from PYTHONPATH: the tree measured.
    argv = [sys.executable, str(STAND_IN), str(load_s), "--index_path", config.index_path, "--corpus_path",
            config.corpus_path, "--retriever_name", config.retriever_name, "--retriever_model", config.retriever_model,
            "--port", "0", "--log_level", "info"]
    server = subprocess.Popen(argv, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            if "Application startup complete" in line:
                break
        else:
            raise RuntimeError(f"the server exited with {server.wait()} before serving")
        time.sleep(signal_at_s)
        sent = time.monotonic()
        server.send_signal(sig)
        returncode = server.wait(timeout=load_s + 60)
        return time.monotonic() - sent, returncode
    finally:
        server.kill()
        server.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--load_s", type=float, default=15.0)
    p.add_argument("--signal_at_s", type=float, default=3.0, help="seconds after the app started")
    p.add_argument("--baseline", type=Path, default=None, help="another checkout (e.g. main's) to measure the same way")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    print(f"load {args.load_s:g} s, signal {args.signal_at_s:g} s after start-up, {args.runs} runs; ranges are min-max\n")
    print(f"{'server':10} {'signal':8} {'s to exit':>10} {'exit status':>12} {'target <2 s':>12}")
    for name, tree in trees:
        for sig in (signal.SIGINT, signal.SIGTERM):
            outcomes = [exit_after_signal(tree, sig, args.load_s, args.signal_at_s) for _ in range(args.runs)]
            seconds = [s for s, _ in outcomes]
            verdict = "PASS" if max(seconds) < TARGET_S else "FAIL"
            print(f"{name:10} {sig.name:8} {span(seconds, '{:.2f}'):>10} {' '.join(sorted({str(c) for _, c in outcomes})):>12} "
                  f"{verdict:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
