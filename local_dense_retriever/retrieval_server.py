"""Upstream's entry point of the retrieval server: its command line (upstream's flags unchanged).

The server itself is built by ``local_dense_retriever.app.create_app``.

    python -m local_dense_retriever.retrieval_server \\
        --index_path e5_Flat.index --corpus_path wiki-18.jsonl --topk 3 \\
        --retriever_name e5 --retriever_model intfloat/e5-base-v2 [--faiss_gpu]

With ``RETRIEVAL_API_KEY`` set (or ``--api_key``) ``/retrieve`` requires ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from local_dense_retriever.encoder_config import PRECISIONS, add_encoder_arguments
from local_dense_retriever.logs import setup_logging
from local_dense_retriever.server_config import DEFAULT_RERANK_CANDIDATES, ServerConfig

logger = logging.getLogger(__name__)

# The access token's environment variable; the client (local_search_server) reads the same name.
API_KEY_ENV = "RETRIEVAL_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig(index_path="", corpus_path="")
    p = argparse.ArgumentParser(description="Serve dense (FAISS) or BM25 retrieval over a wiki-18 style corpus.")
    upstream = p.add_argument_group("upstream flags")
    upstream.add_argument("--index_path", required=True, help="FAISS index file (any type), or a BM25 index directory")
    upstream.add_argument("--corpus_path", required=True, help="corpus JSONL: one {\"id\", \"contents\"} object a line")
    upstream.add_argument("--topk", type=int, default=defaults.topk, help="passages per query when a request gives no topk")
    upstream.add_argument("--retriever_name", default=defaults.retriever_name, help="e5, bge, bm25, or another name (then --pooling applies)")
    upstream.add_argument("--retriever_model", default=defaults.retriever_model, help="Hugging Face model id or local directory")
    upstream.add_argument("--faiss_gpu", action="store_true", help="shard the index over all GPUs in fp16 (needs faiss-gpu)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes the server to the network)")
    net.add_argument("--port", type=int, default=8000)
    add_encoder_arguments(p, texts="queries")
    idx = p.add_argument_group("index and corpus")
    idx.add_argument("--faiss_search_params", default=None, help='FAISS ParameterSpace string, e.g. "nprobe=64" or "efSearch=128"')
    idx.add_argument("--corpus_arrow_path", default=None, help="where the Arrow copy of the corpus lives (default: next to the JSONL)")
    batch = p.add_argument_group("batching and limits")
    batch.add_argument("--max_batch_size", type=int, default=defaults.max_batch_size, help="queries encoded and searched together")
    batch.add_argument("--max_wait_ms", type=float, default=defaults.max_wait_ms, help="the longest a batch gathers queries before it runs")
    batch.add_argument("--max_gap_ms", type=float, default=defaults.max_gap_ms, help="a batch runs once no query arrived for this long")
    batch.add_argument("--max_pending_queries", type=int, default=defaults.max_pending_queries, help="beyond this many waiting queries, answer 503")
    batch.add_argument("--max_queries_per_request", type=int, default=defaults.max_queries_per_request)
    batch.add_argument("--max_query_chars", type=int, default=defaults.max_query_chars)
    rerank = p.add_argument_group("rerank stage (Search-R1's hierarchical retriever; off unless --reranker_model is set)")
    rerank.add_argument("--reranker_model", default=None, help="Hugging Face cross-encoder id or directory, e.g. cross-encoder/ms-marco-MiniLM-L12-v2")
    rerank.add_argument("--retrieval_topk", type=int, default=None, help=f"candidates per query the reranker orders (default {DEFAULT_RERANK_CANDIDATES}); at least --topk")
    rerank.add_argument("--reranking_topk", dest="topk", type=int, default=argparse.SUPPRESS, help="upstream's name for --topk")
    rerank.add_argument("--reranker_batch_size", type=int, default=defaults.reranker_batch_size, help="pairs per model call, grouped by length")
    rerank.add_argument("--reranker_max_length", type=int, default=defaults.reranker_max_length, help="token limit of a (query, passage) pair")
    rerank.add_argument("--reranker_precision", choices=PRECISIONS, default=defaults.reranker_precision, help="auto: fp16 on GPU; the CPU default otherwise")
    guard = p.add_argument_group("refusals and access")
    guard.add_argument("--max_body_bytes", type=int, default=defaults.max_body_bytes,
                       help="larger request bodies get 413 unread (default: the largest valid request, "
                            "from --max_queries_per_request and --max_query_chars)")
    guard.add_argument("--body_timeout_s", type=float, default=defaults.body_timeout_s,
                       help="a request body not complete after this many seconds gets 408")
    guard.add_argument("--max_topk", type=int, default=defaults.max_topk, help="the largest topk a request may ask for")
    # A set but empty variable counts as unset.
    guard.add_argument("--api_key", default=os.environ.get(API_KEY_ENV) or None,
                       help=f"require 'Authorization: Bearer <token>' on /retrieve (default: ${API_KEY_ENV} if set); "
                            "prefer the variable: a command line is visible to every user of the machine")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    fields = ServerConfig.__dataclass_fields__
    return ServerConfig(**{name: value for name, value in vars(args).items() if name in fields})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
    except ValueError as exc:  # flags that contradict each other: say which, exit 2 like argparse
        parser.error(str(exc))

    from local_dense_retriever.app import create_app

    failed: list[BaseException] = []

    def stop_on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    app = create_app(config, on_load_error=stop_on_load_error)
    # access_log off: one INFO line per request would flood the log at rollout rates.
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False))
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly and re-raised it
        pass
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
