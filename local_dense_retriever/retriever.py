"""Searcher + passage store: queries in, passages with scores out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from local_dense_retriever.corpus import CorpusStore
from local_dense_retriever.server_config import DEFAULT_RERANK_CANDIDATES, ServerConfig


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


class Reranker(Protocol):
    def score(self, queries: list[str], contents: list[str]) -> np.ndarray:
        """The relevance of passage ``contents[i]`` (a corpus ``contents``) to ``queries[i]``, for each i."""
        ...

    def describe(self) -> dict: ...


class Retriever:
    """Not thread-safe: the server calls it from its single batch worker only.

    With a ``reranker``, the first stage retrieves ``candidates`` passages per query and the
    reranker's order (and scores) decide which ``k`` are served.
    """

    def __init__(self, searcher: Searcher, corpus: CorpusStore, reranker: Reranker | None = None, candidates: int = DEFAULT_RERANK_CANDIDATES):
        if searcher.size != len(corpus):
            raise ValueError(
                f"the index holds {searcher.size} passages but the corpus {corpus.corpus_path} has {len(corpus)}: "
                "they must come from the same corpus (row i of the corpus is document i of the index)"
            )
        self.searcher = searcher
        self.corpus = corpus
        self.reranker = reranker
        # A corpus smaller than --retrieval_topk simply has fewer candidates.
        self.candidates = min(candidates, len(corpus))

    def __len__(self) -> int:
        return len(self.corpus)

    def topk_problem(self, k: int) -> str | None:
        """Why ``k`` passages per query cannot be served (None when they can)."""
        if self.reranker is not None and k > self.candidates:
            return (
                f"topk={k} exceeds the {self.candidates} candidates the reranker orders per query (--retrieval_topk); "
                f"ask for at most {self.candidates} or restart the server with a larger --retrieval_topk"
            )
        return None

    def describe_reranker(self) -> dict | None:
        if self.reranker is None:
            return None
        return {**self.reranker.describe(), "candidates": self.candidates}

    def retrieve(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The top ``k`` passages for each query, best first (fewer when the index has fewer hits)."""
        if self.reranker is None:
            return self._first_stage(queries, k)
        return self._rerank(queries, self._first_stage(queries, self.candidates), k)

    def _first_stage(self, queries: list[str], k: int) -> list[list[Hit]]:
        scores, ids = self.searcher.search(queries, k)  # a SearchResult
        found = ids >= 0
        # One vectorised lookup for the whole batch, then split back per query.
        documents = iter(self.corpus.get(ids[found].tolist()))
        return [
            [Hit(next(documents), float(score)) for score, ok in zip(row_scores, row_found) if ok]
            for row_scores, row_found in zip(scores, found)
        ]

    def _rerank(self, queries: list[str], candidates: list[list[Hit]], k: int) -> list[list[Hit]]:
        assert self.reranker is not None
        # The pairs of the whole batch in one call: the reranker groups them by length itself.
        pair_queries = [query for query, hits in zip(queries, candidates) for _ in hits]
        contents = [hit.document["contents"] for hits in candidates for hit in hits]
        scores = iter(self.reranker.score(pair_queries, contents).tolist())
        reranked = []
        for hits in candidates:
            rescored = [Hit(hit.document, next(scores)) for hit in hits]
            # sort is stable: pairs the reranker ties keep the first stage's order.
            rescored.sort(key=lambda hit: hit.score, reverse=True)
            reranked.append(rescored[:k])
        return reranked


def load_retriever(config: ServerConfig) -> Retriever:
    """Load the index, the corpus, (for dense retrieval) the encoder and (if set) the reranker the config names."""
    # Imported here so a BM25 server never loads torch/transformers, and a dense one never bm25s.
    if config.is_bm25:
        from local_dense_retriever.bm25 import BM25Searcher

        searcher: Searcher = BM25Searcher(config.index_path)
    else:
        from local_dense_retriever.dense import DenseSearcher, load_index
        from local_dense_retriever.encoder import Encoder

        index = load_index(config.index_path, gpu=config.faiss_gpu, search_params=config.faiss_search_params)
        searcher = DenseSearcher(Encoder(config.encoder_config()), index)
    corpus = CorpusStore(config.corpus_path, config.corpus_arrow_path)
    if config.reranker_model is None:
        return Retriever(searcher, corpus)
    from local_dense_retriever.reranker import CrossEncoderReranker

    reranker = CrossEncoderReranker(
        config.reranker_model,
        device=config.device,
        precision=config.reranker_precision,
        max_length=config.reranker_max_length,
        chunk_size=config.reranker_batch_size,
    )
    return Retriever(searcher, corpus, reranker, config.rerank_candidates)
