"""Stand-ins for the packages slime imports at module level but that cannot be installed here.

slime's rollout and logging modules import ``ray`` (its actors; nothing on the paths we run calls
them), ``sglang`` (engine launch constants and classes), ``sglang_router`` (its version picks the
router's worker-list endpoint when slime aborts), ``pybase64`` (decoding SGLang's base64 arrays),
``pylatexenc`` (math rewards) and ``wandb`` (the logging sink). Each stand-in has only what slime
touches: ``ray.remote`` as a pass-through decorator, names to import, a router version, pybase64's
two codecs (the standard library computes the same bytes), a LaTeX converter that fails loudly if
a test ever reaches a math reward, and a ``wandb.log`` that records what slime logs
(``wandb.logged``).
"""

from __future__ import annotations

import base64
import types


def _remote(*args, **kwargs):
    # @ray.remote and @ray.remote(num_gpus=...) both leave the class or function as it is.
    if len(args) == 1 and not kwargs and callable(args[0]):
        return args[0]
    return lambda target: target


class _LatexNodes2Text:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("pylatexenc stand-in: slime's math rewards are not part of these tests")


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _wandb() -> types.ModuleType:
    wandb = _module("wandb", logged=[], define_metric=lambda *args, **kwargs: None)
    wandb.log = lambda metrics, **kwargs: wandb.logged.append(dict(metrics))
    return wandb


def modules() -> dict[str, types.ModuleType]:
    """Fresh stand-in modules by import name, to put into ``sys.modules`` while slime is imported."""
    stand_ins = [
        # A package: slime imports ray.util.scheduling_strategies.
        _module("ray", remote=_remote, __path__=[]),
        _module("ray.util.scheduling_strategies", PlacementGroupSchedulingStrategy=type("PlacementGroupSchedulingStrategy", (), {})),
        _module(
            "sglang.srt.constants",
            GPU_MEMORY_TYPE_CUDA_GRAPH="cuda_graph",
            GPU_MEMORY_TYPE_KV_CACHE="kv_cache",
            GPU_MEMORY_TYPE_WEIGHTS="weights",
        ),
        _module("sglang.srt.server_args", ServerArgs=type("ServerArgs", (), {})),
        _module("sglang.srt.utils", kill_process_tree=lambda *args, **kwargs: None),
        # A router with GET /workers, as every slime revision we test expects.
        _module("sglang_router", __version__="0.3.0"),
        _module("pybase64", b64decode=base64.b64decode, b64encode=base64.b64encode),
        _module("pylatexenc.latex2text", LatexNodes2Text=_LatexNodes2Text),
        _wandb(),
    ]
    by_name = {module.__name__: module for module in stand_ins}
    # Parent packages of the nested stand-ins, each holding its child as an attribute.
    for name in list(by_name):
        while "." in name:
            parent, _, child = name.rpartition(".")
            by_name.setdefault(parent, _module(parent, __path__=[]))
            setattr(by_name[parent], child, by_name[name])
            name = parent
    return by_name
