"""Which floating-point type a model runs in: one rule for every model the server loads.

``auto`` picks the fastest type whose answers stay those of fp32 (measured by
``bench/encoder_precision.py``): fp16 on a GPU (as upstream), bf16 on a CPU with native bf16
instructions (AVX-512 BF16 or AMX; about 2x fp32's speed there), fp32 otherwise (bf16 emulated
in software is slower than fp32). ``fp32``, ``bf16`` and ``fp16`` force a type.
"""

from __future__ import annotations

import torch

# Defined with the command-line options (a module that imports no torch).
from local_dense_retriever.encoder_config import PRECISIONS

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
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"`` (the names ``--precision`` takes)."""
    return {dtype: name for name, dtype in _DTYPES.items()}[dtype]
