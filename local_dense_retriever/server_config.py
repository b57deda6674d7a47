"""The retrieval server's configuration (the plugin's is ``generate_with_search.SEARCH_R1_CONFIGS``):
everything the server needs to know, in one place (built from the CLI or by tests)."""

from __future__ import annotations

from dataclasses import dataclass

from local_dense_retriever.encoder_config import EncoderConfig, Pooling, encoder_config_from


@dataclass(frozen=True)
class ServerConfig:
    index_path: str
    corpus_path: str
    topk: int = 3
    retriever_name: str = "e5"
    retriever_model: str = "intfloat/e5-base-v2"
    faiss_gpu: bool = False
    # None: the Arrow cache sits next to the corpus JSONL.
    corpus_arrow_path: str | None = None
    faiss_search_params: str | None = None
    # Encoder (dense retrievers only).
    pooling: Pooling | None = None
    max_length: int = 256
    device: str = "auto"
    fp16: bool | None = None
    precision: str = "auto"
    encode_chunk_size: int = 32
    # Micro-batching: one worker encodes and searches up to max_batch_size queries at a time; a
    # batch gathers queries for at most max_wait_ms and stops when none arrived for max_gap_ms
    # (see batcher.py). A lone query on an idle server waits max_gap_ms.
    max_batch_size: int = 256
    max_wait_ms: float = 100.0
    max_gap_ms: float = 20.0
    # Admission: beyond this many waiting queries new requests get 503 + Retry-After.
    max_pending_queries: int = 16384
    # Request bounds (validated with a 422 before any work is done).
    max_queries_per_request: int = 1024
    max_query_chars: int = 4096

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"--topk must be at least 1, got {self.topk}")
        if self.max_batch_size < 1:
            raise ValueError(f"--max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0 or self.max_gap_ms < 0:
            raise ValueError(f"--max_wait_ms and --max_gap_ms must be >= 0, got {self.max_wait_ms} and {self.max_gap_ms}")

    @property
    def is_bm25(self) -> bool:
        return self.retriever_name.lower() == "bm25"

    def encoder_config(self) -> EncoderConfig:
        return encoder_config_from(self)
