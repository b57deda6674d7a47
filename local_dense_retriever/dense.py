"""Dense search: an encoder for the queries and a FAISS index of the passages."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss

from local_dense_retriever.retriever import SearchResult

if TYPE_CHECKING:  # torch: imported where an encoder is built, not by the index builder's --help
    from local_dense_retriever.encoder import Encoder

logger = logging.getLogger(__name__)

# faiss-cpu 1.15 ships with distance_compute_blas_threshold = 128000: any batch of fewer queries
# is scored one query at a time with SIMD loops instead of one matrix product. Measured on 2 CPU
# cores against 100k x 384 vectors, a batch of 256 queries takes 630 ms that way and 107 ms
# through BLAS. 20 is the threshold faiss used for years; single queries are unaffected.
BLAS_THRESHOLD = 20


def faiss_reason(exc: BaseException) -> str:
    """FAISS's own reason from one of its errors, without the C++ function and source line before
    it ("Error in void faiss::...() at /project/faiss/...cpp:64: Error: 'd % M == 0' failed: ...")."""
    text = str(exc).strip()
    text = re.sub(r"^(Error in .*? at \S+:\d+: )+", "", text, flags=re.DOTALL)  # nested: one per C++ frame
    # "Error: 'n > 0' failed: <reason>" gives the reason, or the failed condition when no reason follows.
    return re.sub(r"^Error: ('.*?' failed)(?:: (.+))?$", lambda m: m[2] or m[1], text, flags=re.DOTALL)


def use_blas_for_query_batches() -> None:
    """Let FAISS score batches of ``BLAS_THRESHOLD`` or more queries with BLAS (process-wide)."""
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD


def faiss_gpu_problem() -> str | None:
    """Why ``--faiss_gpu`` cannot work here (None when it can)."""
    if not hasattr(faiss, "GpuMultipleClonerOptions") or faiss.get_num_gpus() == 0:
        return ("--faiss_gpu needs faiss with GPU support and a visible GPU (install faiss-gpu, check "
                "CUDA_VISIBLE_DEVICES), or drop --faiss_gpu to search on CPU")
    return None


def shard_on_all_gpus(index: faiss.Index) -> faiss.Index:
    """Copy ``index`` onto every GPU, sharded, in fp16 (as upstream does with ``--faiss_gpu``).

    Needs a faiss build with GPU support (faiss-gpu); it cannot run on this project's CPU CI.
    """
    if (problem := faiss_gpu_problem()) is not None:
        raise RuntimeError(problem)
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = True
    options.shard = True
    logger.info("sharding the index over %d GPU(s) in fp16", faiss.get_num_gpus())
    return faiss.index_cpu_to_all_gpus(index, co=options)


@dataclass(frozen=True)
class LoadedIndex:
    """A FAISS index and how it came into memory (reported by ``/health``)."""

    index: faiss.Index
    # "mmap": the file is mapped, its pages live in the page cache (shared by every process that
    # maps it, read on first use); "read": copied into the process's own memory.
    loaded: str
    # The index file's size: what it occupies in memory once every page has been touched.
    file_bytes: int
    # Where it is searched: "cpu", or "gpu" (fp16 shards on every GPU).
    device: str = "cpu"


# IO_FLAG_MMAP_IFC maps flat codes (Flat, SQ, PQ...), HNSW graphs and IVF lists (measured with
# faiss-cpu 1.15: loading any of them adds < 10 MB of anonymous memory whatever the index size).
_MMAP_FLAGS = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | getattr(faiss, "IO_FLAG_READ_ONLY", 0)


def read_index(path: str) -> LoadedIndex:
    """Map the index file when this FAISS can (any index type), else read it into memory."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"index {path} does not exist; pass a FAISS index file")
    file_bytes = os.path.getsize(path)
    not_mapped = None
    if hasattr(faiss, "IO_FLAG_MMAP_IFC"):
        try:
            return LoadedIndex(faiss.read_index(path, _MMAP_FLAGS), "mmap", file_bytes)
        except RuntimeError as exc:  # a type this FAISS cannot map: read it instead
            not_mapped = faiss_reason(exc)
    try:
        index = faiss.read_index(path)
    except RuntimeError as exc:
        raise ValueError(f"{path} is not a FAISS index this FAISS can read: {faiss_reason(exc)}") from None
    if not_mapped is not None:
        logger.warning("FAISS cannot memory-map %s (%s); read it into memory", path, not_mapped)
    return LoadedIndex(index, "read", file_bytes)


def load_index(path: str, *, gpu: bool = False, search_params: str | None = None) -> LoadedIndex:
    """Load any FAISS index (Flat, SQ8, IVF-PQ, HNSW...) and apply search-time parameters.

    ``search_params`` uses FAISS's ParameterSpace syntax, e.g. ``"nprobe=64"`` for IVF or
    ``"efSearch=128"`` for HNSW (several: ``"nprobe=64,k_factor_rf=4"``).
    """
    loaded = read_index(path)
    index = loaded.index
    if gpu:
        # The GPU copy is made from the mapped file; the host keeps only page cache.
        index = shard_on_all_gpus(index)
    if search_params:
        space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
        try:
            space.set_index_parameters(index, search_params)
        except RuntimeError as exc:
            raise ValueError(
                f"--faiss_search_params {search_params!r} does not apply to this {type(faiss.downcast_index(index)).__name__}: {faiss_reason(exc)}"
            ) from exc
    use_blas_for_query_batches()
    logger.info("index %s: %s, %.2f GB, %s", path, type(faiss.downcast_index(loaded.index)).__name__, loaded.file_bytes / 1e9, loaded.loaded)
    return LoadedIndex(index, loaded.loaded, loaded.file_bytes, "gpu" if gpu else "cpu")


class DenseSearcher:
    """Encodes queries and searches the index. Called from one thread only (the batch worker)."""

    def __init__(self, encoder: Encoder, loaded: LoadedIndex):
        index = loaded.index
        if encoder.dim != index.d:
            raise ValueError(
                f"the encoder makes {encoder.dim}-d vectors but the index holds {index.d}-d vectors: "
                "the index was built with another model; pass the --retriever_model it was built with"
            )
        self.encoder = encoder
        self.index = index
        self.loaded = loaded

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: list[str], k: int) -> SearchResult:
        vectors = self.encoder.encode(queries, is_query=True)
        scores, ids = self.index.search(vectors, k)
        return SearchResult(scores=scores, ids=ids)

    def describe(self) -> dict:
        return {
            "index_type": type(faiss.downcast_index(self.index)).__name__,
            "index_bytes": self.loaded.file_bytes,
            "index_loaded": self.loaded.loaded,
            "index_device": self.loaded.device,
            "dim": int(self.index.d),
            "model": self.encoder.config.model_path,
            "device": str(self.encoder.device),
            "precision": self.encoder.precision,
            "pooling": self.encoder.pooling,
        }
