"""Searcher + passage store: queries in, passages with scores out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from local_dense_retriever.corpus import CorpusStore
from local_dense_retriever.server_config import ServerConfig


class SearchResult(NamedTuple):
    """What a searcher finds for a batch of queries: two ``(len(queries), k)`` arrays, best first.

    ``ids`` are corpus row numbers (int64), -1 where the index has no further hit; ``scores`` are
    float32, higher is better.
    """

    scores: np.ndarray
    ids: np.ndarray


class Searcher(Protocol):
    size: int

    def search(self, queries: list[str], k: int) -> SearchResult: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class Hit:
    document: dict
    score: float


class Retriever:
    """Not thread-safe: the server calls it from its single batch worker only."""

    def __init__(self, searcher: Searcher, corpus: CorpusStore):
        if searcher.size != len(corpus):
            raise ValueError(
                f"the index holds {searcher.size} passages but the corpus {corpus.corpus_path} has {len(corpus)}: "
                "they must come from the same corpus (row i of the corpus is document i of the index)"
            )
        self.searcher = searcher
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def retrieve(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The top ``k`` passages for each query, best first (fewer when the index has fewer hits)."""
        scores, ids = self.searcher.search(queries, k)  # a SearchResult
        found = ids >= 0
        # One vectorised lookup for the whole batch, then split back per query.
        documents = iter(self.corpus.get(ids[found].tolist()))
        return [
            [Hit(next(documents), float(score)) for score, ok in zip(row_scores, row_found) if ok]
            for row_scores, row_found in zip(scores, found)
        ]


def load_retriever(config: ServerConfig) -> Retriever:
    """Load the index, the corpus and (for dense retrieval) the encoder the config names."""
    # Imported here so a BM25 server never loads torch/transformers, and a dense one never bm25s.
    if config.is_bm25:
        from local_dense_retriever.bm25 import BM25Searcher

        searcher: Searcher = BM25Searcher(config.index_path)
    else:
        from local_dense_retriever.dense import DenseSearcher, load_index
        from local_dense_retriever.encoder import Encoder

        index = load_index(config.index_path, gpu=config.faiss_gpu, search_params=config.faiss_search_params)
        searcher = DenseSearcher(Encoder(config.encoder_config()), index)
    return Retriever(searcher, CorpusStore(config.corpus_path, config.corpus_arrow_path))
