"""Which floating-point type a model runs in: one rule for every model the server loads.

``auto`` is fp16 on a GPU (as upstream) and fp32 on a CPU. bf16 on a CPU with bf16 instructions
(AVX-512 BF16 or AMX) encodes MiniLM about 1.5x faster, but measured on real text
(``bench/retrieval_server.py``: 5,000 WordNet usage examples against 100,000 synsets) its top 3
equal fp32's for only 97.5% of queries, below the 99% a default must keep; ``--precision bf16``
asks for it. Re-encoding in fp32 only the queries whose top hits nearly tie brings bf16 to 99.9%,
but measured on a CPU with AVX-512 BF16 (no AMX) it re-encoded 13.6% of them and searched those
again, which cost what bf16 saved, so it is not done. ``fp32``, ``bf16`` and ``fp16`` force a type.
"""

from __future__ import annotations

import logging

import torch

# Defined with the command-line options (a module that imports no torch).
from local_dense_retriever.encoder_config import PRECISIONS

logger = logging.getLogger(__name__)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU features that give bf16 matrix products in hardware (x86); see torch.cpu.get_capabilities().
_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86 AVX-512 BF16 or AMX)."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None or not torch.backends.mkldnn.is_available():
        return False
    capabilities = get_capabilities()
    return any(capabilities.get(feature, False) for feature in _BF16_CPU_FEATURES)


def choose_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype a model on ``device`` runs in for ``precision`` (one of ``PRECISIONS``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning("this CPU has no bf16 instructions: bf16 is emulated and slower than fp32; use --precision fp32")
    return _DTYPES[precision]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"`` (the names ``--precision`` takes)."""
    return {dtype: name for name, dtype in _DTYPES.items()}[dtype]
