"""The index menu, measured on real text: memory, recall@3 against flat, queries/s, build time.

    python bench/index_menu.py [--passages 50000] [--queries 2000] [--duration 10]

Corpus and queries: WordNet synsets and usage examples (bench/realtext.py), encoded for real by
the packaged MiniLM (384-d) in fp32; the passage embeddings are cached under bench/_work/. The
flat index is built from them, and every other type is converted from it with
``index_builder --from_index`` (the path users take from the downloaded ``e5_Flat.index``).

For each type: bytes per passage (index file size / passages; the file is what is mapped into
memory), recall@3 against flat (the share of flat's top 3 that the index also returns in its top 3,
over all queries), queries/s and p99 at ``--clients`` concurrent clients through the real server
(as bench/retrieval_server.py measures, with these queries; the encoder, not the index, bounds it at
this size), and
build (conversion) time. GB per million passages and at wiki-18's 21M are the per-passage cost
multiplied out; e5-base's vectors have 768 dimensions, twice MiniLM's, so its codes take twice as
many bytes (the HNSW graph does not grow with the dimension).

Targets, for the types docs/retrieval-server.md recommends: SQfp16 recall@3 >= 0.999 (flat's results); SQ8
recall@3 >= 0.99 in at most 30% of flat's bytes; every request through the server answered.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import (
    realtext,  # noqa: E402
    retrieval_server,  # noqa: E402
)
from local_dense_retriever.dense import load_index  # noqa: E402
from local_dense_retriever.encoder import Encoder  # noqa: E402
from local_dense_retriever.encoder_config import EncoderConfig  # noqa: E402
from local_dense_retriever.index_builder import convert_index  # noqa: E402
from local_dense_retriever.server_config import ServerConfig  # noqa: E402
from search_r1_slime.demo import minilm_path  # noqa: E402

# (factory string, search parameters): the recommended types; IVF lists are sized for the
# benchmark's corpus (about 4*sqrt(n)); for wiki-18 use IVF65536 or so.
MENU = [
    ("Flat", None),
    ("SQfp16", None),
    ("SQ8", None),
    ("IVF1024,PQ64", "nprobe=64"),
    ("IVF1024,PQ48x4fs,Refine(SQ8)", "nprobe=64,k_factor_rf=8"),
    ("HNSW32", "efSearch=128"),
]
WIKI18_PASSAGES = 21_015_324
WIKI18_DIM, BENCH_DIM = 768, 384


def recall_at(k: int, found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def wiki18_gb(bytes_per_passage: float, factory: str, index: faiss.Index) -> float:
    """Bytes at 21M passages with 768-d vectors: the codes scale with the dimension, the HNSW links do not."""
    graph = 0.0
    hnsw = faiss.downcast_index(index)
    if isinstance(hnsw, faiss.IndexHNSW):
        graph = hnsw.hnsw.nb_neighbors(0) * 4 + 8  # level-0 links (int32) and offsets per passage (upper levels are ~3% more)
    return ((bytes_per_passage - graph) * WIKI18_DIM / BENCH_DIM + graph) * WIKI18_PASSAGES / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load measured per index")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--only", nargs="*", default=None, help="factory strings to measure (default: the whole menu)")
    p.add_argument("--no_server", action="store_true", help="skip the queries/s measurement")
    p.add_argument("--workdir", type=Path, default=ROOT / "bench" / "_work")
    args = p.parse_args()
    args.topk, args.max_batch_size, args.max_wait_ms, args.max_gap_ms = 3, ServerConfig.max_batch_size, ServerConfig.max_wait_ms, ServerConfig.max_gap_ms
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    corpus, queries = realtext.build(args.workdir, args.passages, args.queries)
    encoder = Encoder(EncoderConfig(minilm_path(), retriever_name="minilm", device="cpu", precision="fp32"))
    passages = realtext.passage_embeddings(corpus, lambda texts: encoder.encode(texts, is_query=False))
    query_vectors = encoder.encode(queries, is_query=True)
    flat_path = realtext.flat_index(corpus, passages)
    _, truth = load_index(str(flat_path)).index.search(query_vectors, 3)
    print(f"{len(passages)} WordNet passages, {len(queries)} real-text queries, MiniLM fp32 vectors ({passages.shape[1]}-d), "
          f"{args.clients} clients through the server, {os.cpu_count()} cores (shared)")
    print(f"{'index':32s} {'params':26s} {'B/passage':>9s} {'GB/1M':>6s} {'GB wiki-18 e5':>13s} {'recall@3':>8s} {'q/s':>6s} {'p99 s':>6s} {'build s':>7s}")
    measured = {}
    for factory, params in MENU:
        if args.only and factory not in args.only:
            continue
        path = flat_path if factory == "Flat" else args.workdir / f"wordnet_{len(passages)}_{factory.replace(',', '_')}.index"
        started = time.monotonic()
        if factory != "Flat":
            convert_index(flat_path, path, factory=factory, show_progress=False)
        build_s = time.monotonic() - started
        index = load_index(str(path), search_params=params).index
        _, found = index.search(query_vectors, 3)
        per_passage = path.stat().st_size / len(passages)
        served = {"qps": float("nan"), "p99": float("nan")}
        if not args.no_server:
            config = replace(ServerConfig(index_path=str(path), corpus_path=str(corpus), retriever_name="minilm",
                                          retriever_model=minilm_path(), device="cpu"), faiss_search_params=params)
            served = retrieval_server.run_server_phase(config, args, queries)
        print(f"{factory:32s} {params or '-':26s} {per_passage:9.0f} {per_passage * 1e6 / 1e9:6.2f} {wiki18_gb(per_passage, factory, index):13.1f} "
              f"{recall_at(3, found, truth):8.3f} {served['qps']:6.0f} {served['p99']:6.2f} {build_s:7.1f}", flush=True)
        measured[factory] = (recall_at(3, found, truth), per_passage, served.get("errors"))
    report_targets(measured)


def report_targets(measured: dict[str, tuple[float, float, int | None]]) -> None:
    """PASS/FAIL of the targets (module docstring) for the types measured: (recall@3, bytes per
    passage, failed requests through the server or None without it)."""
    flat_bytes = measured.get("Flat", (0, 4 * BENCH_DIM, 0))[1]
    targets = {"SQfp16": (0.999, None), "SQ8": (0.99, 0.3)}
    for factory, (min_recall, max_share) in targets.items():
        if factory not in measured:
            print(f"no target judged for {factory}: not measured (--only)")
            continue
        recall, per_passage, _ = measured[factory]
        share = per_passage / flat_bytes
        ok = recall >= min_recall and (max_share is None or share <= max_share)
        limit = "" if max_share is None else f", {share:.0%} of flat's bytes (target <= {max_share:.0%})"
        print(f"{'PASS' if ok else 'FAIL'} {factory}: recall@3 {recall:.3f} (target >= {min_recall}){limit}")
    errors = [e for _, _, e in measured.values()]
    if None in errors:
        print("no target judged for the server: --no_server")
    else:
        print(f"{'PASS' if not sum(errors) else 'FAIL'}: {sum(errors)} failed requests through the server (target 0)")


if __name__ == "__main__":
    main()
