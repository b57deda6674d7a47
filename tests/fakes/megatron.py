"""One-rank stand-ins for the Megatron pieces slime's loss code calls (they need a GPU cluster).

slime's ``loss.py`` asks ``megatron.core.mpu`` for its parallel groups, sizes and ranks, and
(2026-01, 2026-04) computes log-probs with Megatron's ``fused_vocab_parallel_cross_entropy``.
Here every group is the one-process gloo group the caller opened on loopback (``gloo_world``),
every size is 1 and every rank 0, except the context-parallel size a test may raise to see a
refusal; the cross entropy is the one-rank value (the whole vocabulary is on this rank), computed
by PyTorch's own ``cross_entropy``. Everything else in slime's loss path runs as written.
"""

from __future__ import annotations

import contextlib
import socket
import types
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F


@contextlib.contextmanager
def gloo_world() -> Iterator[dist.ProcessGroup]:
    """A one-rank gloo process group on loopback (the WORLD group), destroyed on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def _fused_vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp_group) -> torch.Tensor:
    # Megatron's layout: logits [seq, batch, vocab], target [seq, batch]; one rank holds all of the vocabulary.
    assert dist.get_world_size(tp_group) == 1
    seq, batch, vocab = logits.shape
    return F.cross_entropy(logits.float().reshape(-1, vocab), target.reshape(-1), reduction="none").view(seq, batch)


def modules(group: dist.ProcessGroup, context_parallel_size: int = 1) -> dict[str, types.ModuleType]:
    """The stand-in modules by import name, to put into ``sys.modules`` while slime is imported."""
    mpu = types.ModuleType("megatron.core.mpu")
    for kind in ("tensor_model", "data", "context", "pipeline_model", "expert_model"):
        setattr(mpu, f"get_{kind}_parallel_group", lambda *args, **kwargs: group)
        setattr(mpu, f"get_{kind}_parallel_rank", lambda *args, **kwargs: 0)
        setattr(mpu, f"get_{kind}_parallel_world_size", lambda *args, **kwargs: 1)
    mpu.get_context_parallel_world_size = lambda *args, **kwargs: context_parallel_size
    mpu.is_pipeline_last_stage = lambda *args, **kwargs: True
    fused = types.ModuleType("megatron.core.fusions.fused_cross_entropy")
    fused.fused_vocab_parallel_cross_entropy = _fused_vocab_parallel_cross_entropy
    by_name = {
        "megatron": types.ModuleType("megatron"),
        "megatron.core": types.ModuleType("megatron.core"),
        "megatron.core.fusions": types.ModuleType("megatron.core.fusions"),
        "megatron.core.mpu": mpu,
        "megatron.core.fusions.fused_cross_entropy": fused,
    }
    for name, module in by_name.items():
        module.__path__ = []
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(by_name[parent], child, module)
    return by_name
