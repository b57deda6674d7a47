"""The retrieval server's configuration (the plugin's is ``generate_with_search.SEARCH_R1_CONFIGS``):
everything the server needs to know, in one place (built from the CLI or by tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from local_dense_retriever.encoder_config import PRECISIONS, EncoderConfig, Pooling, encoder_config_from

# The shortest --api_key taken: a shorter one can be guessed, and the plugin's clients refuse it too
# (search_r1_slime.settings.MIN_KEY_CHARS; this package imports nothing of the plugin, a test keeps
# the two equal).
MIN_KEY_CHARS = 16

# Search-R1's hierarchical retriever hands its cross-encoder the first stage's top 10.
DEFAULT_RERANK_CANDIDATES = 10
# Seconds a client is asked to wait (Retry-After) when the server is loading or overloaded.
RETRY_AFTER_S = 1


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
    # Rerank stage (off unless reranker_model is set): the first stage retrieves retrieval_topk
    # candidates per query (None: DEFAULT_RERANK_CANDIDATES), a cross-encoder scores each
    # (query, passage) pair in batches of reranker_batch_size pairs, and the best topk are served.
    reranker_model: str | None = None
    retrieval_topk: int | None = None
    reranker_precision: str = "auto"
    reranker_max_length: int = 512
    reranker_batch_size: int = 32
    # Refusals before any work (see app.BodyLimits): a body over max_body_bytes gets 413 (None: the
    # largest valid request, body_limit), one slower than body_timeout_s gets 408; a topk over
    # max_topk gets 422 (it bounds the search's work and the answer's size).
    max_body_bytes: int | None = None
    body_timeout_s: float = 30.0
    max_topk: int = 100
    # Refusals before the app sees a request (see http_limits): a request head (request line and
    # headers) over max_header_bytes or with more than max_headers headers gets 431, one not
    # complete within header_timeout_s gets 408; beyond max_connections open connections a new one
    # gets 503 + Retry-After. Our clients send heads of a few hundred bytes and reuse connections.
    max_header_bytes: int = 16384
    max_headers: int = 100
    header_timeout_s: float = 10.0
    max_connections: int = 1024
    # One log line per request (app.RequestLog).
    request_log: bool = True
    # Bearer token required on /retrieve (None: none). repr=False keeps it out of logs and tracebacks.
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"--topk must be at least 1, got {self.topk}")
        if self.max_batch_size < 1:
            raise ValueError(f"--max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0 or self.max_gap_ms < 0:
            raise ValueError(f"--max_wait_ms and --max_gap_ms must be >= 0, got {self.max_wait_ms} and {self.max_gap_ms}")
        for name in ("max_queries_per_request", "max_query_chars", "max_topk", "max_header_bytes", "max_headers",
                     "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.topk > self.max_topk:
            raise ValueError(f"--topk ({self.topk}) must be at most --max_topk ({self.max_topk})")
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise ValueError(f"--max_body_bytes must be at least 1, got {self.max_body_bytes}")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.api_key is not None and not (self.api_key and self.api_key.isascii() and self.api_key.isprintable() and " " not in self.api_key):
            # The message leaves the token out: it may end up in a log.
            raise ValueError("--api_key (or RETRIEVAL_API_KEY) must be non-empty printable ASCII without spaces, "
                             "as an HTTP header carries it; e.g. the output of: openssl rand -hex 32")
        if self.api_key is not None and len(self.api_key) < MIN_KEY_CHARS:  # the clients refuse it too
            raise ValueError(f"--api_key (or RETRIEVAL_API_KEY) is shorter than {MIN_KEY_CHARS} characters, too short "
                             "to be a secret (value not shown); e.g. use the output of: openssl rand -hex 32")
        self._check_rerank()

    def _check_rerank(self) -> None:
        if self.reranker_model is None:
            if self.retrieval_topk is not None:
                raise ValueError("--retrieval_topk sets the candidates a reranker orders; it needs --reranker_model")
            return
        if self.reranker_precision not in PRECISIONS:
            raise ValueError(f"--reranker_precision must be one of {PRECISIONS}, got {self.reranker_precision!r}")
        if self.reranker_max_length < 2 or self.reranker_batch_size < 1:
            raise ValueError(
                f"--reranker_max_length must be at least 2 and --reranker_batch_size at least 1, "
                f"got {self.reranker_max_length} and {self.reranker_batch_size}"
            )
        candidates = self.rerank_candidates
        if candidates is not None and candidates < self.topk:
            raise ValueError(
                f"--retrieval_topk ({candidates}) must be at least --topk ({self.topk}): the reranker can only "
                "serve passages the first stage retrieved"
            )

    @property
    def rerank_candidates(self) -> int | None:
        """Passages per query the first stage hands the reranker; None without a reranker."""
        if self.reranker_model is None:
            return None
        return DEFAULT_RERANK_CANDIDATES if self.retrieval_topk is None else self.retrieval_topk

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
