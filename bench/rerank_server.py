"""Benchmark: what the rerank stage costs, next to the same server without it, on CPU.

    python bench/rerank_server.py [--clients 256] [--rerank_clients 256] [--duration 30] [--passages 100000]

Setup (cached under bench/_work/): the index and queries of bench/retrieval_server.py (random unit
vectors, queries encoded for real by the packaged MiniLM), with a corpus of ``--passage_words``-word
passages (wiki-18's are about 100 words; the reranker reads every candidate, so its cost follows
their length). The reranker is a cross-encoder of ms-marco-MiniLM-L12-v2's shape (12 layers, 384
wide, BERT vocabulary) with random weights: nothing can be downloaded here, and its scores do not
matter for cost.

1. In process: the first stage (encode + search + passage lookup) and the rerank stage (the
   cross-encoder over ``--candidates`` passages per query) on batches of ``--batch`` queries: ms per query.
2. Server: ``retrieval_server`` in its own process, ``--clients`` concurrent clients (one query,
   topk 3 a request) without the reranker, then ``--rerank_clients`` with it: queries/s, p50/p99.

Target: every request answered (0 errors) in both server phases. The stages' costs are reported,
not judged: on CPU the cross-encoder is the cost by design.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval_server import prepare, queries, run_server_phase  # noqa: E402
from local_dense_retriever.server_config import ServerConfig  # noqa: E402
from search_r1_slime.demo import minilm_path  # noqa: E402

WORDS = ("history river empire music science country city war king museum language island century "
         "painting theory mountain village election university novel army temple bridge festival").split()


def long_corpus(workdir: Path, passages: int, words: int) -> Path:
    """``passages`` passages of ``words`` words (row count matches the benchmark index)."""
    path = workdir / f"corpus_{passages}_{words}words.jsonl"
    if not path.exists():
        rng = random.Random(0)
        with open(path, "w") as f:
            for i in range(passages):
                text = " ".join(rng.choice(WORDS) for _ in range(words))
                f.write(json.dumps({"id": str(i), "contents": f'"Passage {i}"\n{text}'}) + "\n")
    return path


def cross_encoder(workdir: Path, layers: int) -> Path:
    """A randomly initialised cross-encoder shaped like ms-marco-MiniLM-L{layers}-v2."""
    path = workdir / f"cross_encoder_minilm_L{layers}"
    if not (path / "config.json").exists():
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=384, num_hidden_layers=layers, num_attention_heads=12,
                            intermediate_size=1536, max_position_embeddings=512, num_labels=1)
        BertForSequenceClassification(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def in_process_costs(config: ServerConfig, args: argparse.Namespace) -> tuple[float, float]:
    """ms per query of the first stage (top 3) and of the rerank stage (``--candidates`` pairs)."""
    from local_dense_retriever.retriever import Retriever, load_retriever

    retriever = load_retriever(config)
    assert retriever.reranker is not None
    first_stage = Retriever(retriever.searcher, retriever.corpus)  # the same searcher, no rerank stage
    pool = queries(args.batch * (args.repeats + 1), seed=3)
    batches = [pool[i : i + args.batch] for i in range(0, len(pool), args.batch)]
    first = rerank = 0.0
    for n, batch in enumerate(batches):  # the first batch warms up and is not counted
        started = time.perf_counter()
        candidates = first_stage.retrieve(batch, args.candidates)
        middle = time.perf_counter()
        retriever.reranker.score([q for q, hits in zip(batch, candidates) for _ in hits],
                                 [hit.document["contents"] for hits in candidates for hit in hits])
        done = time.perf_counter()
        if n:
            first, rerank = first + middle - started, rerank + done - middle
    counted = args.batch * (len(batches) - 1)
    return 1000 * first / counted, 1000 * rerank / counted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=100_000)
    p.add_argument("--passage_words", type=int, default=100)
    p.add_argument("--layers", type=int, default=12, help="cross-encoder depth (ms-marco-MiniLM-L12-v2: 12)")
    p.add_argument("--candidates", type=int, default=10, help="--retrieval_topk")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="queries per in-process batch")
    p.add_argument("--repeats", type=int, default=3, help="in-process batches measured")
    p.add_argument("--clients", type=int, default=256, help="concurrent clients without the reranker")
    p.add_argument("--rerank_clients", type=int, default=256, help="concurrent clients with the reranker")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--skip_server", action="store_true", help="in-process costs only")
    p.add_argument("--workdir", type=Path, default=ROOT / "bench" / "_work")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.max_batch_size, args.max_wait_ms, args.max_gap_ms = ServerConfig.max_batch_size, ServerConfig.max_wait_ms, ServerConfig.max_gap_ms

    base = prepare(args.workdir, args.passages)
    base = dataclasses.replace(base, corpus_path=str(long_corpus(args.workdir, args.passages, args.passage_words)), topk=args.topk)
    model = cross_encoder(args.workdir, args.layers)
    reranked = dataclasses.replace(base, reranker_model=str(model), retrieval_topk=args.candidates)
    print(f"{args.passages} passages of {args.passage_words} words, flat index, MiniLM encoder, cross-encoder MiniLM-L{args.layers} "
          f"shape ({reranked.reranker_precision} precision), {args.candidates} candidates -> top {args.topk}, CPU ({os.cpu_count()} cores)")
    first_ms, rerank_ms = in_process_costs(reranked, args)
    print(f"in process, batches of {args.batch}: first stage {first_ms:7.1f} ms/query   rerank stage {rerank_ms:7.1f} ms/query "
          f"({rerank_ms / args.candidates:.1f} ms/pair)")
    if args.skip_server:
        print("no target judged: the target is about the server phases (--skip_server)")
        return
    errors = {}
    flags = ("--topk", str(args.topk), "--reranker_model", str(model), "--retrieval_topk", str(args.candidates))
    for name, clients, extra in (("without reranker", args.clients, ("--topk", str(args.topk))), ("with reranker", args.rerank_clients, flags)):
        args.clients = clients
        served = run_server_phase(base, args, queries(50_000, seed=1), extra)
        print(f"server {name:17} {clients:4} clients: {served['qps']:7.1f} queries/s  p50 {served['p50'] * 1000:7.0f} ms  "
              f"p99 {served['p99'] * 1000:7.0f} ms  errors {served['errors']}  mean batch {served['mean_batch']:.0f}")
        if served["first_error"]:
            print(f"  first error: {served['first_error']}")
        errors[name] = served["errors"]
    print(f"{'PASS' if not any(errors.values()) else 'FAIL'}: errors " + ", ".join(f"{n} {e}" for n, e in errors.items()) + " (target 0)")


if __name__ == "__main__":
    main()
