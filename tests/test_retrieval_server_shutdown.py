"""A signal while the retriever loads stops the server promptly (wiki-18 takes minutes to load).

The real command line runs in its own process, with a load that takes a minute (the stand-in
tests/fakes/slow_load_server.py); the signal comes once the app has started (its load with it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_retrieval_server import dense_config  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
LOAD_S = 60
EXIT_BOUND_S = 10  # generous for a loaded machine, far below the load


@pytest.mark.parametrize("sig, returncode", [(signal.SIGINT, 0), (signal.SIGTERM, -signal.SIGTERM)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_loading_exits_long_before_the_load_ends(dense_config, sig, returncode):
    argv = [sys.executable, "-m", "tests.fakes.slow_load_server", str(LOAD_S), "--index_path", dense_config.index_path,
            "--corpus_path", dense_config.corpus_path, "--retriever_name", "e5", "--retriever_model", dense_config.retriever_model,
            "--port", "0", "--log_level", "info"]
    server = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:  # uvicorn's start-up lines: its signal handlers are set, the load has started
            if "Application startup complete" in line:
                break
        else:
            pytest.fail(f"the server exited with {server.wait()} before serving")
        sent = time.monotonic()
        server.send_signal(sig)
        assert server.wait(timeout=LOAD_S) == returncode
        assert time.monotonic() - sent < EXIT_BOUND_S
    finally:
        server.kill()
        server.wait()
