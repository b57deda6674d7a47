"""Upstream's entry point of the retrieval server: its command line (upstream's flags unchanged).

The server itself is built by ``local_dense_retriever.app.create_app``.

    python -m local_dense_retriever.retrieval_server \\
        --index_path e5_Flat.index --corpus_path wiki-18.jsonl --topk 3 \\
        --retriever_name e5 --retriever_model intfloat/e5-base-v2 [--faiss_gpu]

With ``RETRIEVAL_API_KEY`` set (or ``--api_key``) ``/retrieve`` requires ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from local_dense_retriever.cli import ArgumentParser, ExtraImports, check_file, check_model, check_output
from local_dense_retriever.encoder_config import PRECISIONS, add_encoder_arguments, resolve_retriever_name
from local_dense_retriever.logs import setup_logging
from local_dense_retriever.server_config import DEFAULT_RERANK_CANDIDATES, ServerConfig

with ExtraImports("retriever") as RETRIEVER:
    import uvicorn

    from local_dense_retriever.http_limits import uvicorn_config

logger = logging.getLogger(__name__)

# The access token's environment variable; the client (local_search_server) reads the same name.
API_KEY_ENV = "RETRIEVAL_API_KEY"


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def build_parser() -> ArgumentParser:
    defaults = ServerConfig(index_path="", corpus_path="")
    p = ArgumentParser(
        prog="python -m local_dense_retriever.retrieval_server",
        description="Serve dense (FAISS) or BM25 retrieval over a wiki-18 style corpus.",
    )
    upstream = p.add_argument_group("upstream flags")
    upstream.add_argument("--index_path", required=True, help="FAISS index file (any type), or a BM25 index directory")
    upstream.add_argument("--corpus_path", required=True, help="corpus JSONL: one {\"id\", \"contents\"} object a line")
    upstream.add_argument("--topk", type=int, default=defaults.topk, help="passages per query when a request gives no topk")
    upstream.add_argument("--retriever_name", default=None,
                          help="e5, bge, dpr, bm25, or another name for a model without prefixes (then --pooling applies); "
                               "default: the family --retriever_model's name shows, refused when it shows none")
    upstream.add_argument("--retriever_model", default=defaults.retriever_model, help="Hugging Face model id or local directory")
    upstream.add_argument("--faiss_gpu", action="store_true", help="shard the index over all GPUs in fp16 (needs faiss-gpu)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes the server to the network)")
    net.add_argument("--port", type=port_number, default=8000, help="port to listen on (0: any free port)")
    add_encoder_arguments(p, texts="queries")
    idx = p.add_argument_group("index and corpus")
    idx.add_argument("--faiss_search_params", default=None,
                     help='FAISS ParameterSpace string, e.g. "nprobe=64" or "efSearch=128" (default: none, the index\'s own)')
    idx.add_argument("--corpus_arrow_path", default=None,
                     help="where the Arrow copy of the corpus lives (default: next to the JSONL, or in the user's cache "
                          "when that folder is read-only or inside this package)")
    batch = p.add_argument_group("batching and limits")
    batch.add_argument("--max_batch_size", type=int, default=defaults.max_batch_size, help="queries encoded and searched together")
    batch.add_argument("--max_wait_ms", type=float, default=defaults.max_wait_ms, help="the longest a batch gathers queries before it runs")
    batch.add_argument("--max_gap_ms", type=float, default=defaults.max_gap_ms, help="a batch runs once no query arrived for this long")
    batch.add_argument("--max_pending_queries", type=int, default=defaults.max_pending_queries, help="beyond this many waiting queries, answer 503")
    batch.add_argument("--max_queries_per_request", type=int, default=defaults.max_queries_per_request,
                       help="the most queries one request may carry (more: 422)")
    batch.add_argument("--max_query_chars", type=int, default=defaults.max_query_chars, help="the longest query, in characters (longer: 422)")
    batch.add_argument("--threads", type=int, default=None,
                       help="threads the encoder and FAISS compute with (default: $OMP_NUM_THREADS if set, else the cores "
                            "this process may run on); they wait for work asleep, not spinning, unless $OMP_WAIT_POLICY says otherwise")
    rerank = p.add_argument_group("rerank stage (Search-R1's hierarchical retriever; off unless --reranker_model is set)")
    rerank.add_argument("--reranker_model", default=None,
                        help="Hugging Face cross-encoder id or directory, e.g. cross-encoder/ms-marco-MiniLM-L12-v2 (default: none, no rerank stage)")
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
    guard.add_argument("--max_header_bytes", type=int, default=defaults.max_header_bytes,
                       help="a request head (request line and headers) larger than this gets 431")
    guard.add_argument("--max_headers", type=int, default=defaults.max_headers, help="a request with more headers gets 431")
    guard.add_argument("--header_timeout_s", type=float, default=defaults.header_timeout_s,
                       help="a request head not complete after this many seconds gets 408")
    guard.add_argument("--max_connections", type=int, default=defaults.max_connections,
                       help="beyond this many open connections a new one gets 503 (the OS's open file limit, "
                            "ulimit -n, must allow as many)")
    guard.add_argument("--max_topk", type=int, default=defaults.max_topk, help="the largest topk a request may ask for")
    # Read from the environment by config_from_args, not as the flag's default: --help shows defaults.
    guard.add_argument("--api_key", default=None,
                       help=f"require 'Authorization: Bearer <token>' on /retrieve (default: ${API_KEY_ENV} if set, else none); "
                            "prefer the variable: a command line is visible to every user of the machine")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"], help="the least severe log lines shown")
    p.add_argument("--no_request_log", dest="request_log", action="store_false",
                   help="no log line per request (method, path, status, latency, query count)")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig the parsed command line names; raises ValueError for contradicting flags."""
    fields = ServerConfig.__dataclass_fields__
    values = {name: value for name, value in vars(args).items() if name in fields}
    values["retriever_name"] = resolve_retriever_name(args.retriever_name, args.retriever_model)
    # A set but empty variable counts as unset.
    values["api_key"] = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServerConfig(**values)


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first file, folder or model directory of the command line that is
    missing (or --faiss_gpu without a GPU FAISS)."""
    if (args.retriever_name or "").lower() == "bm25":
        if not Path(args.index_path).is_dir():
            raise ValueError(f"--index_path {args.index_path}: no such directory (a BM25 index is the folder index_builder wrote)")
    else:
        check_file("--index_path", args.index_path)
        check_model("--retriever_model", args.retriever_model)
    check_file("--corpus_path", args.corpus_path)
    if args.corpus_arrow_path is not None and not Path(args.corpus_arrow_path).is_file():
        check_output("--corpus_arrow_path", args.corpus_arrow_path)
    if args.reranker_model is not None:
        check_model("--reranker_model", args.reranker_model)
    if args.faiss_gpu:
        from local_dense_retriever.dense import faiss_gpu_problem

        if (problem := faiss_gpu_problem()) is not None:
            raise ValueError(problem)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, before anything loads: a busy port is found at once."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart may take the port at once
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = "; is another server running there? pass another --port" if exc.errno == errno.EADDRINUSE else ""
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror or exc}){hint}") from None
    return sock


def warn_if_exposed(sock: socket.socket, config: ServerConfig) -> None:
    address = sock.getsockname()[0]
    if config.api_key is None and not ipaddress.ip_address(address.split("%")[0]).is_loopback:
        logger.warning(
            "listening on %s without an access token: anyone who can reach this port can query the server; "
            "set %s (clients send the same value)", address, API_KEY_ENV,
        )


def configure_threads(threads: int | None) -> None:
    """The OpenMP threads of torch and FAISS (each loads its own OpenMP runtime, which reads these
    variables once, when it loads): ``threads`` of them, and a passive wait policy, so that a thread
    with no work sleeps instead of spinning. By default an OpenMP thread spins for a while at every
    barrier of every parallel region, which is harmless on idle cores; beside another busy process
    (training on the same node) the spinning thread takes the core its partner needs to finish,
    and every batch crawls (bench/busy_neighbour.py). Must run before torch or faiss is imported:
    afterwards the variables are read no more (``--faiss_gpu``'s check loads FAISS first, whose CPU
    threads then keep OpenMP's defaults). An explicit ``OMP_WAIT_POLICY`` is kept."""
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ.setdefault("OMP_NUM_THREADS", str(cores))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def serve(config: ServerConfig, sock: socket.socket, log_level: str) -> int:
    """Load and serve until stopped; 1 when loading failed."""
    from local_dense_retriever.app import create_app

    failed: list[BaseException] = []

    def stop_on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    app = create_app(config, on_load_error=stop_on_load_error)
    server = uvicorn.Server(uvicorn_config(app, config, log_level=log_level))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly and re-raised it
        pass
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    RETRIEVER.require(parser)
    if args.threads is not None and args.threads < 1:
        parser.refuse(f"--threads must be at least 1, got {args.threads}")
    setup_logging(args.log_level)
    # Every mistake is found here, in a second, before the index, corpus and encoder load (minutes).
    try:
        check_args(args)
        config = config_from_args(args)
        sock = listen(args.host, args.port)
    except ValueError as exc:
        parser.refuse(str(exc))
    warn_if_exposed(sock, config)
    configure_threads(args.threads)  # after the checks, so that a refused command line changes nothing
    return serve(config, sock, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
