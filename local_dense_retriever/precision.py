"""The floating-point type a model runs in, from ``--*precision`` flags.

Provisional: the CPU fast path is being built elsewhere and will replace this module with the
same ``choose_dtype`` signature.
"""

from __future__ import annotations

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_dtype(device: torch.device, precision: str) -> torch.dtype:
    """``auto``: fp16 on a GPU, fp32 on CPU; otherwise the type named."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose auto, {', '.join(_DTYPES)}")
    return _DTYPES[precision]
