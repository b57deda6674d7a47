"""What a user waits for and pays when the retrieval server starts, side by side with upstream's, at
scale: the time from start to the first correct answer, and memory after a warm-up of real queries.

    python bench/startup_memory.py [--passages 1000000] [--runs 3] [--warmup_queries 1000]

Setup (cached under bench/_work/): a corpus of ``--passages`` passages whose first
``--real_passages`` are WordNet synsets (bench/realtext.py; needs Debian's ``wordnet-base``),
encoded by the packaged MiniLM (384-d) in fp32; the others are synthetic passages with random unit
vectors, which cost the same to map, read and search (a flat index of 1.5 GB at 1M passages).
The queries are WordNet usage examples of the real synsets. The first one is the question both
servers must answer: its top 3, found by an exact search in this process, with gaps between the
scores wide enough that float rounding cannot reorder them.

Each run starts, one after the other in fresh processes:

* upstream: a stand-in doing what Search-R1's ``retrieval_server.py`` does on CPU: it imports
  FastAPI and uvicorn, reads the whole index (``faiss.read_index``), loads the corpus through
  ``datasets.load_dataset("json")`` and the encoder through ``AutoModel.from_pretrained``, then
  serves ``POST /retrieve`` (mean pooling and L2 norm, a search, the corpus rows of the ids);
* ours: ``python -m local_dense_retriever.retrieval_server`` (index and corpus memory-mapped).

From the process's start, the first question is sent to ``/retrieve`` every 0.1 s until an answer
comes (refused connections and ours' 503 while loading are retried): the time to that answer is
the user's wait, and the answer must be the expected top 3. Then ``--warmup_queries`` other real
queries go out, ``--request_queries`` to a request, one request at a time. After them the
process's memory is read from /proc: anonymous (``RssAnon``: its own memory) and resident
(``VmRSS``: anonymous plus the file pages it has touched, the mapped index and corpus included);
with the peaks (the largest ``RssAnon`` seen polling every 10 ms, and ``VmHWM``). The first run
builds each side's corpus cache (datasets' Arrow cache, our ``.arrow``); the later ones are warm
starts (files in the page cache), reported as ranges.

Targets, ours' worst warm run against upstream's best: time to the first correct answer and
anonymous memory after the warm-up at most 0.5x upstream's, resident memory after the warm-up at
most upstream's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import realtext, retrieval_server  # noqa: E402
from local_dense_retriever.server_config import ServerConfig  # noqa: E402
from search_r1_slime.demo import minilm_path  # noqa: E402

POLL_S = 0.01
# The first question is asked 10 times a second: every request takes the server's GIL from the
# thread that loads, so asking at the memory-polling rate would slow the server it measures.
ASK_EVERY_S = 0.1
TOPK = 3
# The expected top 3 must be separated from each other and from the 4th by at least this much, so
# that the two servers' float rounding cannot reorder them.
MIN_SCORE_GAP = 1e-3
TARGETS = {"first_answer_s": 0.5, "anon_gb": 0.5, "rss_gb": 1.0}


class UpstreamQuery(BaseModel):
    """Upstream's request body."""

    queries: list[str]
    topk: int = TOPK
    return_scores: bool = False


def upstream_like_server(index_path: str, corpus_path: str, model_path: str, port: str) -> None:
    """What upstream's server does on CPU, in its order: build the app, load, then serve."""
    import datasets
    import faiss
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoModel, AutoTokenizer

    app = FastAPI()
    index = faiss.read_index(index_path)  # the whole file into process memory
    corpus = datasets.load_dataset("json", data_files=corpus_path, split="train", num_proc=4)
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
    model = AutoModel.from_pretrained(model_path).eval()

    @torch.no_grad()
    def encode(queries: list[str]) -> np.ndarray:
        inputs = tokenizer(queries, max_length=256, padding=True, truncation=True, return_tensors="pt")
        hidden = model(**inputs, return_dict=True).last_hidden_state
        mask = inputs["attention_mask"][..., None].bool()
        mean = hidden.masked_fill(~mask, 0.0).sum(dim=1) / mask.sum(dim=1)
        return torch.nn.functional.normalize(mean, dim=-1).numpy().astype(np.float32, order="C")

    @app.post("/retrieve")
    def retrieve(request: UpstreamQuery) -> dict:
        scores, ids = index.search(encode(request.queries), request.topk)
        return {"result": [[{"document": corpus[int(i)], "score": float(s)} for i, s in zip(row_ids, row_scores)]
                           for row_ids, row_scores in zip(ids, scores)]}

    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")


def prepare(workdir: Path, passages: int, real_passages: int, queries: int) -> tuple[ServerConfig, list[str], list[str]]:
    """The mixed corpus and its flat index (cached), the queries (the first is the question), and
    the question's expected top 3 passages."""
    import faiss

    from local_dense_retriever.dense import DenseSearcher, load_index
    from local_dense_retriever.encoder import Encoder

    config = ServerConfig(index_path=str(workdir / f"startup_{passages}_{real_passages}_Flat.index"),
                          corpus_path=str(workdir / f"startup_{passages}_{real_passages}.jsonl"), retriever_name="minilm",
                          retriever_model=minilm_path(), device="cpu", precision="fp32")
    real_corpus, examples = realtext.build(workdir, real_passages, queries=real_passages)
    if len(examples) < queries + 1:
        raise SystemExit(f"{real_passages} synsets have {len(examples)} usage examples, fewer than {queries + 1}: raise --real_passages")
    encoder = Encoder(config.encoder_config())
    if not Path(config.index_path).exists():
        vectors = realtext.passage_embeddings(real_corpus, lambda texts: encoder.encode(texts, is_query=False))
        lines = real_corpus.read_text().splitlines()
        with open(config.corpus_path, "w") as f:
            f.writelines(line + "\n" for line in lines)
            for i in range(len(lines), passages):
                f.write(json.dumps({"id": str(i), "contents": f'"Passage {i}"\nSynthetic passage number {i}.'}) + "\n")
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        rng = np.random.default_rng(0)
        for start in range(len(lines), passages, 100_000):
            filler = rng.standard_normal((min(100_000, passages - start), vectors.shape[1]), dtype=np.float32)
            faiss.normalize_L2(filler)
            index.add(filler)
        faiss.write_index(index, config.index_path + ".part")
        os.replace(config.index_path + ".part", config.index_path)
    answer_path = Path(config.index_path).with_suffix(".question.json")
    if not answer_path.exists():
        found = DenseSearcher(encoder, load_index(config.index_path)).search(examples[:100], TOPK + 1)
        clear = [row for row, scores in enumerate(found.scores) if (np.diff(-scores) >= MIN_SCORE_GAP).all()]
        if not clear:
            raise SystemExit("no query among the first 100 has a top 3 with clear gaps")
        lines = Path(config.corpus_path).read_text().splitlines()
        contents = [json.loads(lines[i])["contents"] for i in found.ids[clear[0], :TOPK]]
        answer_path.write_text(json.dumps({"query": examples[clear[0]], "contents": contents}))
    question = json.loads(answer_path.read_text())
    others = [q for q in examples if q != question["query"]][:queries]
    return config, [question["query"], *others], question["contents"]


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "VmHWM", "VmRSS"):
                fields[name] = int(value.split()[0])
    return fields


class PeakAnon(threading.Thread):
    """Polls the process's ``RssAnon`` every 10 ms, keeping the largest, until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.stopped = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(POLL_S):
            try:
                self.peak_kb = max(self.peak_kb, memory_kb(self.pid).get("RssAnon", 0))
            except OSError:  # the process is gone; the caller sees why
                return


def retrieve(port: int, queries: list[str], timeout: float = 600) -> list[list[str]]:
    """POST the queries to ``/retrieve``; return each one's passage texts."""
    body = json.dumps({"queries": queries, "topk": TOPK, "return_scores": True}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/retrieve", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return [[hit["document"]["contents"] for hit in hits] for hits in json.load(resp)["result"]]


def first_answer(process: subprocess.Popen, port: int, question: str) -> list[str]:
    """Ask ``question`` every ``ASK_EVERY_S`` until the server answers; return the answer."""
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited with code {process.returncode}")
        asked = time.monotonic()
        try:
            return retrieve(port, [question])[0]
        except urllib.error.HTTPError as exc:
            if exc.code != 503:  # ours while it loads; anything else is a failure
                raise SystemExit(f"{process.args[:3]}: HTTP {exc.code} to the first question: {exc.read()[:200]!r}")
        except OSError:  # not listening yet
            pass
        time.sleep(max(0.0, asked + ASK_EVERY_S - time.monotonic()))


def measure(process: subprocess.Popen, port: int, queries: list[str], expected: list[str], request_queries: int) -> dict:
    """Time to the first correct answer and memory after the warm-up (GB); then stop the process."""
    started = time.monotonic()
    peak = PeakAnon(process.pid)
    peak.start()
    try:
        answer = first_answer(process, port, queries[0])
        first_answer_s = time.monotonic() - started
        if answer != expected:
            raise SystemExit(f"{process.args[:3]} answered the first question wrongly: {answer} instead of {expected}")
        for i in range(1, len(queries), request_queries):
            retrieve(port, queries[i : i + request_queries])
        memory = memory_kb(process.pid)
        peak.stopped.set()
        peak.join()
        return {"first_answer_s": first_answer_s, "anon_gb": memory["RssAnon"] / 1e6, "rss_gb": memory["VmRSS"] / 1e6,
                "peak_anon_gb": max(peak.peak_kb, memory["RssAnon"]) / 1e6, "peak_rss_gb": memory["VmHWM"] / 1e6}
    finally:
        peak.stopped.set()
        process.terminate()
        process.wait(30)


def spread(values: list[float], fmt: str) -> str:
    return format(min(values), fmt) if len(values) == 1 else f"{min(values):{fmt}}-{max(values):{fmt}}"


def describe(r: dict) -> str:
    return (f"first correct answer {r['first_answer_s']:5.1f} s  after warm-up: anonymous {r['anon_gb']:.2f} GB, "
            f"resident {r['rss_gb']:.2f} GB  (peaks {r['peak_anon_gb']:.2f} / {r['peak_rss_gb']:.2f} GB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=1_000_000)
    p.add_argument("--real_passages", type=int, default=20_000, help="WordNet synsets among them (at most 117,659)")
    p.add_argument("--warmup_queries", type=int, default=1000, help="real queries sent after the first answer")
    p.add_argument("--request_queries", type=int, default=50, help="queries per warm-up request")
    p.add_argument("--runs", type=int, default=3, help="starts per side; the first builds the corpus caches")
    p.add_argument("--workdir", type=Path, default=ROOT / "bench" / "_work")
    p.add_argument("--upstream_like_server", nargs=4, metavar=("INDEX", "CORPUS", "MODEL", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.upstream_like_server:
        upstream_like_server(*args.upstream_like_server)
        return
    if not 0 < args.real_passages <= args.passages or args.runs < 1 or args.request_queries < 1:
        p.error("--real_passages must be in 1..--passages, --runs and --request_queries at least 1")

    # Inherited by both sides' processes.
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(args.workdir / "datasets_cache"),
                       "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"})
    args.workdir.mkdir(parents=True, exist_ok=True)
    config, queries, expected = prepare(args.workdir, args.passages, args.real_passages, args.warmup_queries)
    index_gb = Path(config.index_path).stat().st_size / 1e9
    print(f"{args.passages} passages ({args.real_passages} WordNet synsets, the rest random vectors), flat index "
          f"{index_gb:.2f} GB, MiniLM fp32 on CPU, first question {queries[0]!r}, warm-up {len(queries) - 1} real queries "
          f"in requests of {args.request_queries}, {args.runs} starts per side, {os.cpu_count()} cores", flush=True)
    results: dict[str, list[dict]] = {"upstream": [], "ours": []}
    for run in range(args.runs):
        port = retrieval_server.free_port()
        upstream = subprocess.Popen([sys.executable, __file__, "--upstream_like_server", config.index_path, config.corpus_path,
                                     config.retriever_model, str(port)])
        results["upstream"].append(measure(upstream, port, queries, expected, args.request_queries))
        port = retrieval_server.free_port()
        ours = retrieval_server.start_server(config, port)
        results["ours"].append(measure(ours, port, queries, expected, args.request_queries))
        for side in results:
            print(f"  run {run + 1} {side:8s}: {describe(results[side][-1])}", flush=True)
    warm = {side: runs[1:] or runs for side, runs in results.items()}
    print(f"warm starts (runs {2 if args.runs > 1 else 1}-{args.runs}):")
    for side, runs in warm.items():
        print(f"  {side:8s}: first correct answer {spread([r['first_answer_s'] for r in runs], '.1f')} s  after warm-up: "
              f"anonymous {spread([r['anon_gb'] for r in runs], '.2f')} GB, resident {spread([r['rss_gb'] for r in runs], '.2f')} GB  "
              f"(peaks {spread([r['peak_anon_gb'] for r in runs], '.2f')} / {spread([r['peak_rss_gb'] for r in runs], '.2f')} GB)")
    names = {"first_answer_s": "time to the first correct answer", "anon_gb": "anonymous memory after the warm-up",
             "rss_gb": "resident memory after the warm-up"}
    for key, target in TARGETS.items():
        ratio = max(o[key] for o in warm["ours"]) / min(u[key] for u in warm["upstream"])
        print(f"{'PASS' if ratio <= target else 'FAIL'}: {names[key]}, ours / upstream {ratio:.2f} "
              f"(worst warm run of ours against upstream's best; target <= {target})")


if __name__ == "__main__":
    main()
