"""The retrieval server's configuration (the plugin's is ``generate_with_search.SEARCH_R1_CONFIGS``):
everything the server needs to know, in one place (built from the CLI or by tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # Refusals before any work (see app.BodyLimits): a body over max_body_bytes gets 413 (None: the
    # largest valid request, body_limit), one slower than body_timeout_s gets 408; a topk over
    # max_topk gets 422 (it bounds the search's work and the answer's size).
    max_body_bytes: int | None = None
    body_timeout_s: float = 30.0
    max_topk: int = 100
    # Bearer token required on /retrieve (None: none). repr=False keeps it out of logs and tracebacks.
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"--topk must be at least 1, got {self.topk}")
        if self.max_batch_size < 1:
            raise ValueError(f"--max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0 or self.max_gap_ms < 0:
            raise ValueError(f"--max_wait_ms and --max_gap_ms must be >= 0, got {self.max_wait_ms} and {self.max_gap_ms}")
        for name in ("max_queries_per_request", "max_query_chars", "max_topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.topk > self.max_topk:
            raise ValueError(f"--topk ({self.topk}) must be at most --max_topk ({self.max_topk})")
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise ValueError(f"--max_body_bytes must be at least 1, got {self.max_body_bytes}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"--body_timeout_s must be > 0, got {self.body_timeout_s}")
        if self.api_key is not None and not (self.api_key and self.api_key.isascii() and self.api_key.isprintable() and " " not in self.api_key):
            # The message leaves the token out: it may end up in a log.
            raise ValueError("--api_key (or RETRIEVAL_API_KEY) must be non-empty printable ASCII without spaces, "
                             "as an HTTP header carries it; e.g. the output of: openssl rand -hex 32")

    @property
    def is_bm25(self) -> bool:
        return self.retriever_name.lower() == "bm25"

    @property
    def body_limit(self) -> int:
        """The largest /retrieve body accepted, in bytes: ``max_body_bytes``, else the largest valid request."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        # Each query at max_query_chars characters, each character written as a JSON surrogate-pair
        # escape ("\\ud83d\\ude00": 12 bytes, the most one character can take; Python's json.dumps
        # escapes every non-ASCII character), plus its quotes, comma and a pretty-printer's line
        # break and indent; then the keys, topk and return_scores with room to spare.
        return self.max_queries_per_request * (12 * self.max_query_chars + 16) + 4096

    def encoder_config(self) -> EncoderConfig:
        return encoder_config_from(self)
