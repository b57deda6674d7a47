"""Build a retrieval index from a JSONL corpus: a FAISS index (dense) or a bm25s index.

    python -m local_dense_retriever.index_builder --corpus_path corpus.jsonl \\
        --output_path e5_Flat.index --retriever_name e5 --retriever_model intfloat/e5-base-v2

Dense indexes use the server's encoder code (same prefixes, pooling and normalisation), so the
server's queries and the index's passages always agree. Embeddings are streamed batch by batch
into a memory-mapped ``.npy`` file on disk (wiki-18 in e5-base is 64 GB of float32), then fed to
FAISS in chunks. Any FAISS factory string works: ``Flat``, ``HNSW32``, ``IVF4096,Flat``,
``IVF65536,PQ64``...; indexes that need training are trained on a random sample.

An existing flat index (e.g. the downloaded ``e5_Flat.index``) converts into any other type
without re-encoding the corpus; its vectors are read from the memory-mapped file in chunks:

    python -m local_dense_retriever.index_builder --from_index e5_Flat.index \\
        --faiss_type SQ8 --output_path e5_SQ8.index [--train_size 1000000]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from local_dense_retriever.cli import ArgumentParser, ExtraImports, check_file, check_model, check_output, positive_int
from local_dense_retriever.encoder_config import add_encoder_arguments, encoder_config_from, resolve_retriever_name
from local_dense_retriever.logs import setup_logging

with ExtraImports("retriever") as RETRIEVER:
    import faiss

    from local_dense_retriever.corpus import CorpusStore
    from local_dense_retriever.dense import faiss_reason, read_index

if TYPE_CHECKING:  # torch and transformers (seconds) load only once the command line is checked
    from local_dense_retriever.encoder import Encoder

logger = logging.getLogger(__name__)

_ADD_CHUNK_ROWS = 65536


def encode_corpus(
    corpus: CorpusStore, encoder: Encoder, embeddings_path: Path, *, batch_size: int = 256, show_progress: bool = True
) -> np.memmap:
    """Encode every passage into a ``(len(corpus), dim)`` float32 ``.npy`` memmap at ``embeddings_path``."""
    embeddings = np.lib.format.open_memmap(embeddings_path, mode="w+", dtype=np.float32, shape=(len(corpus), encoder.dim))
    with tqdm(total=len(corpus), desc="encoding passages", unit="passage", disable=not show_progress) as bar:
        for start in range(0, len(corpus), batch_size):
            stop = min(start + batch_size, len(corpus))
            embeddings[start:stop] = encoder.encode(corpus.contents(start, stop), is_query=False)
            bar.update(stop - start)
    embeddings.flush()
    return embeddings


class IndexVectors:
    """The vectors stored in a FAISS index, sliced like an array: ``v[start:stop]``, ``v[rows]``.

    Each access decodes only the rows asked for (from the memory-mapped file), so converting
    wiki-18's 64 GB flat index never holds more than one chunk and the training sample.
    """

    def __init__(self, index: faiss.Index):
        self.index = index
        self.shape = (int(index.ntotal), int(index.d))
        try:  # both ways this class reads: a range (chunks) and a list of rows (the training sample)
            index.reconstruct_n(0, min(1, index.ntotal))
            index.reconstruct_batch(np.zeros(min(1, index.ntotal), dtype=np.int64))
        except RuntimeError as exc:
            raise ValueError(
                f"cannot read the vectors back from this {type(faiss.downcast_index(index)).__name__} ({faiss_reason(exc)}); convert from a flat index"
            ) from exc

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, _ = key.indices(len(self))
            return self.index.reconstruct_n(start, max(stop - start, 0))
        return self.index.reconstruct_batch(np.asarray(key, dtype=np.int64))


def new_index(factory: str, dim: int, metric: int, *, vectors: int | None = None, train_size: int = 1_000_000) -> faiss.Index:
    """An empty ``factory`` index of ``dim``-d vectors; raises ValueError with FAISS's reason in one
    line when FAISS cannot build it, or (``vectors`` given) cannot train it on what there is.

    Cheap, so the command line calls it before any work: a typo in a factory string is found in a
    second, not after hours of encoding.
    """
    try:
        index = faiss.index_factory(dim, factory, metric)
    except RuntimeError as exc:
        raise ValueError(
            f"--faiss_type {factory!r}: FAISS cannot build it for {dim}-d vectors: {faiss_reason(exc)} "
            "(see the FAISS wiki's 'The index factory')"
        ) from None
    ivf = faiss.try_extract_index_ivf(index)
    if vectors is not None and ivf is not None and ivf.nlist > min(vectors, train_size):
        raise ValueError(
            f"--faiss_type {factory!r}: its {ivf.nlist} lists need at least {ivf.nlist} training vectors, but there are "
            f"{min(vectors, train_size)} ({vectors} vectors, --train_size {train_size}); use fewer lists"
        )
    return index


def index_embeddings(
    embeddings: np.ndarray | IndexVectors,
    factory: str,
    *,
    train_size: int = 1_000_000,
    seed: int = 0,
    metric: int | None = None,
    show_progress: bool = True,
) -> faiss.Index:
    """A FAISS index (inner product unless ``metric`` says otherwise) over ``embeddings``, built from the factory string."""
    if metric is None:
        metric = faiss.METRIC_INNER_PRODUCT
    index = new_index(factory, embeddings.shape[1], metric, vectors=len(embeddings), train_size=train_size)
    if not index.is_trained:
        rows = np.random.default_rng(seed).choice(len(embeddings), size=min(train_size, len(embeddings)), replace=False)
        logger.info("training %s on %d vectors", factory, len(rows))
        try:
            index.train(np.ascontiguousarray(embeddings[np.sort(rows)]))
        except RuntimeError as exc:
            raise ValueError(f"FAISS cannot train {factory!r} on {len(rows)} vectors: {faiss_reason(exc)}") from exc
    with tqdm(total=len(embeddings), desc="adding to index", unit="vector", disable=not show_progress) as bar:
        for start in range(0, len(embeddings), _ADD_CHUNK_ROWS):
            chunk = np.ascontiguousarray(embeddings[start : start + _ADD_CHUNK_ROWS])
            index.add(chunk)
            bar.update(len(chunk))
    return index


def build_dense_index(
    corpus: CorpusStore,
    encoder: Encoder,
    output_path: str | os.PathLike,
    *,
    factory: str = "Flat",
    batch_size: int = 256,
    embeddings_path: str | os.PathLike | None = None,
    keep_embeddings: bool = False,
    train_size: int = 1_000_000,
    show_progress: bool = True,
) -> Path:
    output_path = Path(output_path)
    embeddings_path = Path(embeddings_path) if embeddings_path else output_path.with_name(output_path.name + ".embeddings.npy")
    try:
        embeddings = encode_corpus(corpus, encoder, embeddings_path, batch_size=batch_size, show_progress=show_progress)
        index = index_embeddings(embeddings, factory, train_size=train_size, show_progress=show_progress)
        write_index(index, output_path)
    except BaseException:  # Ctrl-C or a failure: a half-written embeddings file is of no use to anyone
        embeddings_path.unlink(missing_ok=True)
        raise
    del embeddings
    if not keep_embeddings:
        embeddings_path.unlink()
    logger.info("%s index of %d passages written to %s", factory, index.ntotal, output_path)
    return output_path


def write_index(index: faiss.Index, output_path: Path) -> None:
    # Written under a temporary name first: a crash never leaves a truncated index behind.
    tmp_path = output_path.with_name(output_path.name + ".tmp")
    try:
        faiss.write_index(index, str(tmp_path))
    except RuntimeError as exc:  # e.g. the disk is full
        tmp_path.unlink(missing_ok=True)
        raise OSError(f"cannot write {output_path}: {faiss_reason(exc)}") from exc
    except BaseException:  # Ctrl-C
        tmp_path.unlink(missing_ok=True)
        raise
    os.replace(tmp_path, output_path)


def convert_index(
    source_path: str | os.PathLike, output_path: str | os.PathLike, *, factory: str, train_size: int = 1_000_000, show_progress: bool = True
) -> Path:
    """Rebuild the vectors of the index at ``source_path`` (flat) as a ``factory`` index, same metric and ids."""
    output_path = Path(output_path)
    source = read_index(str(source_path)).index
    started = time.monotonic()
    index = index_embeddings(IndexVectors(source), factory, train_size=train_size, metric=source.metric_type, show_progress=show_progress)
    write_index(index, output_path)
    logger.info("%s (%d vectors) converted to %s in %.0f s: %s", source_path, index.ntotal, factory, time.monotonic() - started, output_path)
    return output_path


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m local_dense_retriever.index_builder",
        description="Build a FAISS or BM25 index from a wiki-18 style JSONL corpus, or convert a flat index.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus_path", help="JSONL, one {\"id\", \"contents\"} object a line (optionally .gz)")
    source.add_argument("--from_index", help="a flat FAISS index (e.g. e5_Flat.index) to convert to --faiss_type without re-encoding")
    p.add_argument("--output_path", required=True, help="index file (dense) or directory (bm25)")
    p.add_argument("--retriever_name", default=None,
                   help="e5, bge, dpr, bm25, or another name for a model without prefixes (then --pooling applies); "
                        "default: the family --retriever_model's name shows, refused when it shows none")
    p.add_argument("--retriever_model", default="intfloat/e5-base-v2", help="Hugging Face model id or local directory")
    p.add_argument("--faiss_type", default="Flat", help='FAISS factory string: "Flat", "HNSW32", "IVF4096,Flat"...')
    p.add_argument("--batch_size", type=positive_int, default=256, help="passages read and written to the embeddings file at once")
    p.add_argument("--embeddings_path", default=None, help="where embeddings are streamed (default: next to the index)")
    p.add_argument("--keep_embeddings", action="store_true", help="keep the .npy embeddings to rebuild other index types")
    p.add_argument("--train_size", type=positive_int, default=1_000_000, help="vectors sampled to train IVF/PQ indexes")
    p.add_argument("--corpus_arrow_path", default=None,
                   help="where the Arrow copy of the corpus lives (default: next to the JSONL, or in the user's cache "
                        "when that folder is read-only or inside this package)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars (e.g. in CI logs)")
    add_encoder_arguments(p, texts="passages")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first path of the command line that cannot be used."""
    if args.from_index:
        check_file("--from_index", args.from_index)
        if Path(args.output_path).absolute() == Path(args.from_index).absolute():
            raise ValueError(f"--output_path {args.output_path} is the --from_index file: write the converted index elsewhere")
    else:
        check_file("--corpus_path", args.corpus_path)
        if args.corpus_arrow_path is not None and not Path(args.corpus_arrow_path).is_file():
            check_output("--corpus_arrow_path", args.corpus_arrow_path)
        if not is_bm25(args):
            check_model("--retriever_model", args.retriever_model)
            if args.embeddings_path is not None:
                check_output("--embeddings_path", args.embeddings_path)
    if is_bm25(args):  # a folder, new or existing
        if Path(args.output_path).is_file():
            raise ValueError(f"--output_path {args.output_path} is a file, but a BM25 index is a folder: name a folder")
        if not Path(args.output_path).is_dir():
            check_output("--output_path", args.output_path)
    else:
        check_output("--output_path", args.output_path)


def is_bm25(args: argparse.Namespace) -> bool:
    return args.corpus_path is not None and (args.retriever_name or "").lower() == "bm25"


def run(args: argparse.Namespace) -> None:
    show_progress = not args.no_progress
    if args.from_index:
        # The index's header only (mapped): its vectors' dimension and metric, to check the factory string.
        source = read_index(args.from_index).index
        if source.ntotal == 0:
            raise ValueError(f"--from_index {args.from_index} holds no vectors")
        new_index(args.faiss_type, source.d, source.metric_type, vectors=source.ntotal, train_size=args.train_size)
        convert_index(args.from_index, args.output_path, factory=args.faiss_type, train_size=args.train_size, show_progress=show_progress)
        return
    if is_bm25(args):
        from local_dense_retriever.bm25 import build_bm25_index

        corpus = CorpusStore(args.corpus_path, args.corpus_arrow_path, show_progress=show_progress)
        new_folder = not Path(args.output_path).exists()
        try:
            build_bm25_index(corpus.contents(0, len(corpus)), args.output_path, show_progress=show_progress)
        except BaseException:  # Ctrl-C or a failure: no half-written index folder of ours is left behind
            if new_folder:
                shutil.rmtree(args.output_path, ignore_errors=True)
            raise
        return
    from local_dense_retriever.encoder import Encoder

    # The encoder (seconds) before the corpus (minutes for its first conversion to Arrow) and the
    # encoding (hours for wiki-18): the factory string is checked against its dimension first.
    encoder = Encoder(encoder_config_from(args))
    new_index(args.faiss_type, encoder.dim, faiss.METRIC_INNER_PRODUCT)
    corpus = CorpusStore(args.corpus_path, args.corpus_arrow_path, show_progress=show_progress)
    new_index(args.faiss_type, encoder.dim, faiss.METRIC_INNER_PRODUCT, vectors=len(corpus), train_size=args.train_size)
    build_dense_index(
        corpus,
        encoder,
        args.output_path,
        factory=args.faiss_type,
        batch_size=args.batch_size,
        embeddings_path=args.embeddings_path,
        keep_embeddings=args.keep_embeddings,
        train_size=args.train_size,
        show_progress=show_progress,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    RETRIEVER.require(parser)
    setup_logging()
    try:
        check_args(args)
        if args.corpus_path:
            args.retriever_name = resolve_retriever_name(args.retriever_name, args.retriever_model)
        run(args)
    except (ValueError, OSError) as exc:  # a user's mistake, or a model or disk problem: FAISS's or HF's reason, on one line
        parser.refuse(" ".join(str(exc).split()))
    except KeyboardInterrupt:  # Ctrl-C: the partial files were removed on the way out (see build_dense_index)
        parser.exit(130, f"{parser.prog}: interrupted; no index written, partial files removed\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
