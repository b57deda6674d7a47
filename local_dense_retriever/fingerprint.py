"""The fingerprint of what answers a search: one short id that changes when any input of an answer does.

A score is only comparable with another made against the same corpus, index, encoder and settings,
and nothing in an answer says which those were. The retrieval server computes ``server_fingerprint``
once, when it has loaded, and reports it in ``/health`` (with its parts) and on every ``/retrieve``
answer (the id); the search database (``search_r1_slime.search_db``) records it with every search
and strict replay refuses a record made against another one.

Cheap on purpose: an index is tens of GB, so a file is not hashed whole but by its size and
``SAMPLE_BLOCKS`` blocks of ``BLOCK_BYTES`` (its head, its tail and evenly spaced blocks between),
which takes milliseconds and catches any rebuild, truncation or other file. Modification times are
left out: a copy of the same file keeps its fingerprint. A change confined to bytes between the
sampled blocks (a flipped bit in the middle of a 60 GB index) is not seen; the FAISS header's
``ntotal``, ``d`` and type, also included, are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

BLOCK_BYTES = 64 * 1024
SAMPLE_BLOCKS = 16


def fingerprint_id(parts: Any) -> str:
    """The id of ``parts`` (any JSON data): ``sha256:`` and 16 hex digits of its canonical JSON."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_sample(path: str | os.PathLike) -> dict:
    """A file's size and the hash of its sampled blocks (all of it when it is small)."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= BLOCK_BYTES * SAMPLE_BLOCKS:
            digest.update(f.read())
        else:
            step = (size - BLOCK_BYTES) / (SAMPLE_BLOCKS - 1)  # first block at 0, last one ends the file
            for i in range(SAMPLE_BLOCKS):
                f.seek(round(i * step))
                digest.update(f.read(BLOCK_BYTES))
    return {"bytes": size, "sampled_sha256": digest.hexdigest()}


def path_sample(path: str | os.PathLike) -> dict:
    """``file_sample`` of a file, or of every file under a folder (a BM25 index, a model) by relative name."""
    root = Path(path)
    if root.is_file():
        return file_sample(root)
    return {str(p.relative_to(root)): file_sample(p) for p in sorted(root.rglob("*")) if p.is_file()}


def model_sample(model: str) -> dict:
    """A model folder's files (config, tokenizer, weights) sampled; a Hugging Face id not on disk as
    a folder is named only (then a new revision under the same id is not seen: pin a folder)."""
    return {"files": path_sample(model)} if Path(model).is_dir() else {"hub_id": model}


def server_fingerprint(config: Any, retriever: Any) -> dict:
    """``{"id", "parts"}`` for a loaded retriever and its ``ServerConfig``: the index and corpus
    files, what the index holds, the encoder and how it is applied, the top-k limits and the rerank stage."""
    searcher = retriever.searcher
    parts: dict[str, Any] = {
        "retriever_name": config.retriever_name,
        "index": path_sample(config.index_path),
        "corpus": file_sample(config.corpus_path),
        "passages": len(retriever),
        "topk": config.topk,
        "max_topk": config.max_topk,
    }
    if config.is_bm25:
        parts["bm25_tokenizer"] = searcher.settings
    else:
        index, encoder = searcher.index, searcher.encoder
        parts["faiss"] = {
            "type": searcher.describe()["index_type"], "ntotal": int(index.ntotal), "d": int(index.d),
            "device": searcher.loaded.device, "search_params": config.faiss_search_params,
        }
        parts["encoder"] = {
            "model": model_sample(encoder.config.model_path),
            "pooling": encoder.pooling,
            "query_prefix": encoder.config.prefix(is_query=True),
            "max_length": encoder.config.max_length,
            "precision": encoder.precision,
        }
    if retriever.reranker is not None:
        described = retriever.describe_reranker()
        parts["rerank"] = {
            "model": model_sample(config.reranker_model),
            "max_length": described["max_length"],
            "precision": described["dtype"],
            "candidates": described["candidates"],
        }
    return {"id": fingerprint_id(parts), "parts": parts}
