"""Lexical search with bm25s (pure Python + numpy: no Java, no pyserini).

The index directory holds bm25s's own files plus ``search_r1_tokenizer.json``, the tokenizer
settings the index was built with, so queries are always tokenized the way the passages were.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from local_dense_retriever.retriever import SearchResult

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "search_r1_tokenizer.json"
DEFAULT_TOKENIZER = {"stopwords": "en", "stemmer": "english"}


def _tokenize(texts: list[str], settings: dict, show_progress: bool) -> list[list[str]]:
    stemmer = Stemmer.Stemmer(settings["stemmer"]) if settings.get("stemmer") else None
    return bm25s.tokenize(
        texts, stopwords=settings.get("stopwords"), stemmer=stemmer, return_ids=False, show_progress=show_progress
    )


def build_bm25_index(contents: list[str], output_dir: str | Path, *, show_progress: bool = True) -> Path:
    """Index passages (row i of ``contents`` becomes document id i) into ``output_dir``."""
    output_dir = Path(output_dir)
    retriever = bm25s.BM25()
    retriever.index(_tokenize(contents, DEFAULT_TOKENIZER, show_progress), show_progress=show_progress)
    retriever.save(str(output_dir), show_progress=show_progress)
    (output_dir / TOKENIZER_FILE).write_text(json.dumps(DEFAULT_TOKENIZER))
    logger.info("BM25 index of %d passages written to %s", len(contents), output_dir)
    return output_dir


class BM25Searcher:
    """Called from one thread only (the batch worker)."""

    def __init__(self, index_dir: str | Path):
        index_dir = Path(index_dir)
        settings_path = index_dir / TOKENIZER_FILE
        if not settings_path.exists():
            raise FileNotFoundError(
                f"{index_dir} is not a BM25 index built by local_dense_retriever.index_builder "
                f"(no {TOKENIZER_FILE}); build one with --retriever_name bm25"
            )
        self.settings = json.loads(settings_path.read_text())
        self.retriever = bm25s.BM25.load(str(index_dir), mmap=True, show_progress=False)
        self.index_dir = index_dir

    @property
    def size(self) -> int:
        return int(self.retriever.scores["num_docs"])

    def search(self, queries: list[str], k: int) -> SearchResult:
        """The top ``k`` passages of each query.

        Passages sharing no term with the query score 0 and are dropped (marked -1), as a Lucene
        search returns only matching documents.
        """
        tokens = _tokenize(queries, self.settings, show_progress=False)
        ids, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return SearchResult(scores=scores.astype(np.float32), ids=np.where(scores > 0, ids, -1).astype(np.int64))

    def describe(self) -> dict:
        return {"index_type": "bm25s", "tokenizer": self.settings}
