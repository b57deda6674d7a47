"""Start-up time and peak memory of the retrieval server, side by side with upstream's, at scale.

    python bench/startup_memory.py [--passages 1000000] [--runs 3]

Setup (cached under bench/_work/): a JSONL corpus of ``--passages`` synthetic passages and a flat
inner-product index of random unit vectors of MiniLM's dimension (384; 1.5 GB at 1M passages).
Start-up and memory do not depend on what the vectors mean, so random ones stand in for encoded
passages here (recall is measured on real text by bench/index_menu.py).

Each run starts, one after the other in fresh processes:

* upstream: a stand-in that starts the way Search-R1's ``retrieval_server.py`` does: it imports
  FastAPI and uvicorn, loads (``faiss.read_index`` of the whole file, the corpus through
  ``datasets.load_dataset("json")``, the encoder through ``AutoModel.from_pretrained``), then runs
  ``uvicorn.run``; it is ready when its port answers HTTP (upstream has no ``/health``, and listens
  only once loaded);
* ours: ``python -m local_dense_retriever.retrieval_server``, ready when ``/health`` answers 200.

Time to ready is measured from process start, asking both the same way (every 0.1 s). Peak total memory is the kernel's VmHWM at ready;
peak anonymous memory (the process's own, not file pages shared through the page cache) is the
largest RssAnon seen by polling every 10 ms. The first run builds each side's corpus cache
(datasets' Arrow cache, our ``.arrow``); the later runs are warm starts (files in the page cache),
reported as a range. Target: ours at most half of upstream's peak anonymous memory and warm start.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import retrieval_server  # noqa: E402

POLL_S = 0.01
# Readiness is asked over HTTP 10 times a second: every question takes the server's GIL from the
# thread that loads, so asking at the memory-polling rate would slow the server it measures.
READY_EVERY_S = 0.1


def upstream_like_server(index_path: str, corpus_path: str, model_path: str, port: str) -> None:
    """What upstream's server does before it serves, in the order it does it (CPU only here)."""
    import datasets
    import faiss
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoModel, AutoTokenizer

    app = FastAPI()  # upstream builds its app (and imports FastAPI, uvicorn) before loading
    index = faiss.read_index(index_path)  # the whole file into process memory
    corpus = datasets.load_dataset("json", data_files=corpus_path, split="train", num_proc=4)
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
    model = AutoModel.from_pretrained(model_path).eval()
    loaded = (index, corpus, tokenizer, model)  # held until the benchmark stops the process
    app.state.loaded = loaded
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "VmHWM", "VmRSS"):
                fields[name] = int(value.split()[0])
    return fields


def watch(process: subprocess.Popen, is_ready) -> dict:
    """Poll memory until ``is_ready()``; return seconds to ready and peak memories (GB)."""
    started, peak_anon, next_question = time.monotonic(), 0, 0.0
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited with code {process.returncode}")
        memory = memory_kb(process.pid)
        peak_anon = max(peak_anon, memory.get("RssAnon", 0))
        if time.monotonic() >= next_question:
            next_question = time.monotonic() + READY_EVERY_S
            if is_ready():
                memory = memory_kb(process.pid)
                return {"ready_s": time.monotonic() - started, "peak_gb": memory["VmHWM"] / 1e6,
                        "peak_anon_gb": max(peak_anon, memory["RssAnon"]) / 1e6}
        time.sleep(POLL_S)


def answers_http(port: int, *, ok_only: bool) -> bool:
    """Whether ``GET /health`` on ``port`` gets an answer (``ok_only``: a 200 answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
            return True
    except urllib.error.HTTPError:  # an answer, not 200 (ours: 503 while loading; upstream: 404)
        return not ok_only
    except OSError:  # not listening yet
        return False


def measure(process: subprocess.Popen, port: int, *, ok_only: bool) -> dict:
    """Watch ``process`` until ``port`` answers (``ok_only``: with 200), then stop it."""
    try:
        return watch(process, lambda: answers_http(port, ok_only=ok_only))
    finally:
        process.terminate()
        process.wait(30)


def spread(values: list[float], fmt: str) -> str:
    return format(min(values), fmt) if len(values) == 1 else f"{min(values):{fmt}}-{max(values):{fmt}}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3, help="starts per side; the first builds the corpus caches")
    p.add_argument("--workdir", type=Path, default=ROOT / "bench" / "_work")
    p.add_argument("--upstream_like_server", nargs=4, metavar=("INDEX", "CORPUS", "MODEL", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.upstream_like_server:
        upstream_like_server(*args.upstream_like_server)
        return

    config = retrieval_server.prepare(args.workdir, args.passages)
    # Inherited by both sides' processes.
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(args.workdir / "datasets_cache"),
                       "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"})
    index_gb = Path(config.index_path).stat().st_size / 1e9
    print(f"{args.passages} passages, flat index {index_gb:.2f} GB (random vectors, 384-d), MiniLM on CPU, "
          f"{args.runs} starts per side, {os.cpu_count()} cores")
    results: dict[str, list[dict]] = {"upstream": [], "ours": []}
    for run in range(args.runs):
        port = retrieval_server.free_port()
        upstream = subprocess.Popen([sys.executable, __file__, "--upstream_like_server", config.index_path, config.corpus_path,
                                     config.retriever_model, str(port)])
        results["upstream"].append(measure(upstream, port, ok_only=False))  # upstream has no /health: any answer
        port = retrieval_server.free_port()
        results["ours"].append(measure(retrieval_server.start_server(config, port), port, ok_only=True))
        for side in results:
            r = results[side][-1]
            print(f"  run {run + 1} {side:8s}: ready {r['ready_s']:5.1f} s  peak {r['peak_gb']:.2f} GB  peak anonymous {r['peak_anon_gb']:.2f} GB")
    warm = {side: runs[1:] or runs for side, runs in results.items()}
    print(f"warm starts (runs 2-{args.runs}):")
    for side, runs in warm.items():
        print(f"  {side:8s}: ready {spread([r['ready_s'] for r in runs], '.1f')} s  "
              f"peak {spread([r['peak_gb'] for r in runs], '.2f')} GB  peak anonymous {spread([r['peak_anon_gb'] for r in runs], '.2f')} GB")
    worst_ratio = {key: max(o[key] for o in warm["ours"]) / min(u[key] for u in warm["upstream"]) for key in ("ready_s", "peak_anon_gb")}
    ok = worst_ratio["ready_s"] <= 0.5 and worst_ratio["peak_anon_gb"] <= 0.5
    print(f"{'PASS' if ok else 'FAIL'}: ours / upstream (worst warm run against upstream's best): "
          f"ready {worst_ratio['ready_s']:.2f}, peak anonymous memory {worst_ratio['peak_anon_gb']:.2f} (targets <= 0.5)")


if __name__ == "__main__":
    main()
