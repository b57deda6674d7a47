"""Load test of the retrieval server against upstream's serving and its in-process limit, on CPU.

    python bench/retrieval_server.py [--duration 30] [--clients 256] [--passages 100000]

Setup (cached under bench/_work/): real text (bench/realtext.py): ``--passages`` WordNet synsets as
the corpus, encoded by the packaged all-MiniLM-L6-v2 in fp32 into a flat inner-product index, and
WordNet's usage examples as the queries, so that what is found, and how often a faster
precision finds something else, is measured on the text it is served.

1. Baseline: an upstream-like server (each request encoded and searched on its own, fp32, in
   FastAPI's thread pool) under the load of step 2 (``--no_baseline`` skips it).
2. Server, once per ``--precisions`` (default fp32 and bf16): ``retrieval_server`` in its own
   process; ``--clients`` concurrent clients, one query per request, for ``--duration`` seconds
   after a warm-up. Prints queries/s, p50/p99 latency, errors and the server's mean batch size.
3. In-process limit: the last precision's retriever in this process, called in batches of
   ``--max_batch_size`` queries with no HTTP, for the same duration (server stopped); and at the
   server's mean batch size, when that differs (with N closed-loop clients the server settles on
   batches of about N/2: one half is encoded while the other half's answers travel).
4. Agreement: per precision, the share of ``--agreement_queries`` queries whose top 3 (ids, in
   order) equal the fp32 encoder's.

Target: a precision at 15x or more the upstream-like server's queries/s with p99 < 1.5 s and 0
errors whose top 3 equal fp32's for at least 99% of the queries. Run it on an otherwise idle
machine: the clients and the server share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import realtext  # noqa: E402
from local_dense_retriever.server_config import ServerConfig  # noqa: E402
from search_r1_slime.demo import minilm_path  # noqa: E402

DIM = 384
SUBJECTS = ["the Eiffel Tower", "penicillin", "the Nile", "Mount Everest", "the Beatles", "Marie Curie",
            "the Roman Empire", "the Moon landing", "photosynthesis", "the French Revolution", "Tokyo", "jazz"]
TEMPLATES = ["who discovered {s}", "when was {s} first described", "what is the history of {s}",
             "where can I learn about {s} and its influence", "which country is most associated with {s}",
             "how old is {s}", "what happened to {s} in the twentieth century"]


def queries(n: int, seed: int = 0) -> list[str]:
    """Synthetic question-like queries of varied length, for benchmarks where what they find does not matter."""
    rng = random.Random(seed)
    return [f"{rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS))} {i}" for i in range(n)]


def prepare(workdir: Path, passages: int) -> ServerConfig:
    """A synthetic corpus and a flat index of random unit vectors: for cost at scale, not for what is found."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus, index_path = workdir / f"corpus_{passages}.jsonl", workdir / f"random_{passages}_Flat.index"
    if not corpus.exists():
        with open(corpus, "w") as f:
            for i in range(passages):
                f.write(json.dumps({"id": str(i), "contents": f'"Passage {i}"\nSynthetic passage number {i} for the load test.'}) + "\n")
    if not index_path.exists():
        import faiss

        vectors = np.random.default_rng(0).standard_normal((passages, DIM), dtype=np.float32)
        faiss.normalize_L2(vectors)
        index = faiss.IndexFlatIP(DIM)
        index.add(vectors)
        faiss.write_index(index, str(index_path))
    return ServerConfig(index_path=str(index_path), corpus_path=str(corpus), retriever_name="minilm",
                        retriever_model=minilm_path(), device="cpu")


def prepare_real_text(workdir: Path, passages: int) -> tuple[ServerConfig, list[str]]:
    """The WordNet corpus of ``passages`` synsets, its flat index, and the usage examples of those synsets (shuffled)."""
    from local_dense_retriever.encoder import Encoder
    from local_dense_retriever.encoder_config import EncoderConfig

    corpus, examples = realtext.build(workdir, passages, queries=passages)
    encoder = Encoder(EncoderConfig(minilm_path(), retriever_name="minilm", device="cpu", precision="fp32"))
    index_path = realtext.flat_index(corpus, realtext.passage_embeddings(corpus, lambda texts: encoder.encode(texts, is_query=False)))
    config = ServerConfig(index_path=str(index_path), corpus_path=str(corpus), retriever_name="minilm",
                          retriever_model=minilm_path(), device="cpu")
    return config, examples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(session: aiohttp.ClientSession, url: str, server: subprocess.Popen) -> dict:
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            async with session.get(f"{url}/health") as resp:
                body = await resp.json()
                if body["status"] == "ready":
                    return body
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)


async def load(url: str, clients: int, duration: float, warmup: float, topk: int, pool: list[str]) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def client(c: int) -> None:
            i = c
            while (now := time.monotonic()) < stop_at:
                payload = {"queries": [pool[i % len(pool)]], "topk": topk, "return_scores": False}
                i += clients
                try:
                    async with session.post(f"{url}/retrieve", json=payload) as resp:
                        body = await resp.json()
                        ok = resp.status == 200 and len(body["result"]) == 1 and len(body["result"][0]) == topk
                        problem = None if ok else f"HTTP {resp.status}: {str(body)[:100]}"
                except Exception as exc:  # a benchmark counts every failure, whatever it is
                    problem = f"{type(exc).__name__}: {exc}"
                done = time.monotonic()
                if now >= measure_from:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(done - now)

        await asyncio.gather(*(client(c) for c in range(clients)))
        async with session.get(f"{url}/health") as resp:
            served = (await resp.json())["served"]
    lat = np.array(latencies)
    return {
        "qps": len(lat) / duration,
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "mean_batch": served["queries"] / max(served["batches"], 1),
    }


def start_server(config: ServerConfig, port: int, *flags: str) -> subprocess.Popen:
    """``retrieval_server`` for ``config`` on CPU at 127.0.0.1:``port``, in its own process; ``flags`` are appended."""
    return subprocess.Popen(server_command(config, port, *flags), cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def server_command(config: ServerConfig, port: int, *flags: str) -> list[str]:
    """The command line of ``start_server``."""
    cmd = [sys.executable, "-m", "local_dense_retriever.retrieval_server", "--index_path", config.index_path,
           "--corpus_path", config.corpus_path, "--retriever_name", config.retriever_name,
           "--retriever_model", config.retriever_model, "--device", "cpu", "--port", str(port),
           "--precision", config.precision, "--log_level", "warning"]
    if config.corpus_arrow_path:
        cmd += ["--corpus_arrow_path", config.corpus_arrow_path]
    if config.faiss_search_params:
        cmd += ["--faiss_search_params", config.faiss_search_params]
    return [*cmd, *flags]


def run_server_phase(config: ServerConfig, args: argparse.Namespace, pool: list[str], extra_flags: tuple[str, ...] = ()) -> dict:
    """The load of ``pool``'s queries on a server for ``config``; ``extra_flags`` are appended to
    its command line (bench/rerank_server.py adds its reranker)."""
    port = free_port()
    server = start_server(config, port, "--max_batch_size", str(args.max_batch_size), "--max_wait_ms", str(args.max_wait_ms),
                          "--max_gap_ms", str(args.max_gap_ms), *extra_flags)
    return load_server_process(server, port, args, pool)


def load_server_process(server: subprocess.Popen, port: int, args: argparse.Namespace, pool: list[str]) -> dict:
    """Wait until the server process (listening on ``port``) is ready, run the load, stop it."""
    url = f"http://127.0.0.1:{port}"

    async def main() -> dict:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, url, server)
        return await load(url, args.clients, args.duration, args.warmup, args.topk, pool)

    try:
        return asyncio.run(main())
    finally:
        server.terminate()
        server.wait(30)


def serve_upstream_like(config: ServerConfig, port: int) -> None:
    """A stand-in of upstream's serving pattern (the baseline): a plain (sync) endpoint that
    encodes and searches each request's queries on its own, fp32, in FastAPI's thread pool; no
    batching across requests. Same encoder, index and corpus code as ours."""
    import threading

    import faiss
    import uvicorn
    from fastapi import FastAPI

    from local_dense_retriever.corpus import CorpusStore
    from local_dense_retriever.encoder import Encoder

    encoder = Encoder(replace(config, precision="fp32").encoder_config())
    index = faiss.read_index(config.index_path)
    corpus = CorpusStore(config.corpus_path)
    app, lock, served = FastAPI(), threading.Lock(), {"queries": 0, "batches": 0}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ready", "served": served}

    @app.post("/retrieve")
    def retrieve(body: dict) -> dict:
        _, ids = index.search(encoder.encode(body["queries"], is_query=True), body.get("topk", 3))
        with lock:
            served["queries"] += len(body["queries"])
            served["batches"] += 1
        return {"result": [corpus.get(row.tolist()) for row in ids]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_upstream_like_phase(args: argparse.Namespace, pool: list[str]) -> dict:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve_upstream_like", str(port), "--passages", str(args.passages), "--workdir", str(args.workdir)]
    return load_server_process(subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}), port, args, pool)


def run_in_process_phase(config: ServerConfig, batch_sizes: list[int], args: argparse.Namespace, pool: list[str]) -> dict[int, float]:
    """Queries/s of batched encode + search + passage lookup, no HTTP, for each batch size."""
    from local_dense_retriever.retriever import load_retriever

    retriever = load_retriever(config)
    rates = {}
    for batch in batch_sizes:
        retriever.retrieve(pool[:batch], args.topk)  # warm-up
        done, i, start = 0, batch, time.monotonic()
        while time.monotonic() - start < args.duration:
            retriever.retrieve(pool[i : i + batch], args.topk)
            i, done = (i + batch) % (len(pool) - batch), done + batch
        rates[batch] = done / (time.monotonic() - start)
    return rates


def top3_agreement(config: ServerConfig, precisions: list[str], texts: list[str]) -> dict[str, float]:
    """Per precision: the share of ``texts`` whose top 3 (in order) equal the fp32 encoder's."""
    from local_dense_retriever.dense import DenseSearcher, load_index
    from local_dense_retriever.encoder import Encoder

    index = load_index(config.index_path)

    def top3(precision: str) -> np.ndarray:
        return DenseSearcher(Encoder(replace(config, precision=precision).encoder_config()), index).search(texts, 3).ids

    reference = top3("fp32")
    return {precision: float((top3(precision) == reference).all(axis=1).mean()) for precision in precisions}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured in each phase")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--passages", type=int, default=100_000, help="WordNet synsets in the corpus (at most 117,659)")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--max_batch_size", type=int, default=ServerConfig.max_batch_size)
    p.add_argument("--max_wait_ms", type=float, default=ServerConfig.max_wait_ms)
    p.add_argument("--max_gap_ms", type=float, default=ServerConfig.max_gap_ms)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="encoder precisions to serve with, in turn")
    p.add_argument("--agreement_queries", type=int, default=5000, help="queries whose top 3 are compared with fp32's")
    p.add_argument("--workdir", type=Path, default=ROOT / "bench" / "_work")
    p.add_argument("--no_baseline", action="store_true", help="skip the upstream-like server")
    p.add_argument("--serve_upstream_like", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    config, pool = prepare_real_text(args.workdir, args.passages)
    if args.serve_upstream_like:
        serve_upstream_like(config, args.serve_upstream_like)
        return
    print(f"{args.passages} WordNet passages, flat index, {len(pool)} real-text queries, MiniLM on CPU ({os.cpu_count()} cores), "
          f"{args.clients} clients x 1 query, max_batch_size {args.max_batch_size}, max_wait_ms {args.max_wait_ms}, "
          f"max_gap_ms {args.max_gap_ms}")
    baseline = None if args.no_baseline else run_upstream_like_phase(args, pool)
    if baseline:
        print(f"upstream-like: {baseline['qps']:7.1f} queries/s  p50 {baseline['p50'] * 1000:6.0f} ms  "
              f"p99 {baseline['p99'] * 1000:6.0f} ms  errors {baseline['errors']}")
    served_by = {}
    for precision in args.precisions:
        config = replace(config, precision=precision)
        served = served_by[precision] = run_server_phase(config, args, pool)
        print(f"server {precision:4s}: {served['qps']:7.1f} queries/s  p50 {served['p50'] * 1000:6.0f} ms  "
              f"p99 {served['p99'] * 1000:6.0f} ms  errors {served['errors']}  mean batch {served['mean_batch']:.0f}")
        if served["first_error"]:
            print(f"             first error: {served['first_error']}")
        if baseline:
            print(f"             {served['qps'] / baseline['qps']:.1f}x the upstream-like server's queries/s")
    mean_batch = max(1, round(served["mean_batch"]))
    limits = run_in_process_phase(config, sorted({args.max_batch_size, mean_batch}), args, pool)
    for batch, rate in limits.items():
        print(f"in-process ({config.precision}): {rate:7.1f} queries/s  (batches of {batch}, no HTTP)  server/in-process = {served['qps'] / rate:.0%}")
    shares = top3_agreement(config, args.precisions, pool[: args.agreement_queries])
    for precision, share in shares.items():
        print(f"top 3 equal to fp32's ({min(args.agreement_queries, len(pool))} real-text queries): {precision:4s} {share:.1%}")
    for precision, served in served_by.items():
        checks = [(served["p99"] < 1.5, f"p99 {served['p99']:.2f} s (target < 1.5 s)"),
                  (served["errors"] == 0, f"{served['errors']} errors (target 0)"),
                  (shares[precision] >= 0.99, f"top 3 as fp32's for {shares[precision]:.1%} (target >= 99%)")]
        if baseline:
            speedup = served["qps"] / baseline["qps"]
            checks.insert(0, (speedup >= 15, f"{speedup:.1f}x the upstream-like server's queries/s (target >= 15x)"))
        unjudged = "" if baseline else "; speed (target >= 15x the upstream-like server) not judged: --no_baseline"
        print(f"{'PASS' if all(ok for ok, _ in checks) else 'FAIL'} {precision:4s}: " + ", ".join(text for _, text in checks) + unjudged)


if __name__ == "__main__":
    main()
