"""Encoder settings shared by the retrieval server (queries) and the index builder (passages).

One code path for both sides matters: a passage encoded one way and a query another way would
silently lower recall. The conventions follow the models' own model cards:

* E5 (``intfloat/e5-*``): ``"query: "`` / ``"passage: "`` prefixes, mean pooling, L2 norm.
* BGE (``BAAI/bge-*``): an instruction before queries only, CLS pooling, L2 norm.
* anything else: no prefix, the pooling given (mean by default), L2 norm (except DPR, whose
  scores are unnormalised inner products, as upstream).

The family is read from ``--retriever_name`` (a substring match, as upstream does). This module
imports no torch, so a BM25 server and the command lines stay light.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Literal

Pooling = Literal["mean", "cls", "pooler"]
POOLINGS: tuple[str, ...] = ("mean", "cls", "pooler")
# What the model computes in (see precision.choose_dtype): auto = fp16 on GPU, fp32 on CPU.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


@dataclass(frozen=True)
class EncoderConfig:
    """How to load and apply an encoder.

    ``pooling=None`` picks the family's pooling (CLS for BGE, mean otherwise); ``device="auto"``
    takes the first GPU when there is one; ``precision="auto"`` means fp16 on GPU, fp32 on CPU. ``fp16`` is upstream's switch, kept for its users:
    True means ``precision="fp16"``, False ``"fp32"``.
    """

    model_path: str
    retriever_name: str = "e5"
    pooling: Pooling | None = None
    max_length: int = 256
    device: str = "auto"
    fp16: bool | None = None
    precision: str = "auto"
    # Texts per model call (see Encoder.encode).
    chunk_size: int = 32

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {POOLINGS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        if self.fp16 is not None and self.precision not in ("auto", self.requested_precision):
            raise ValueError(f"--fp16 {self.fp16} contradicts --precision {self.precision}; pass only --precision")

    @property
    def requested_precision(self) -> str:
        """``precision``, or what upstream's ``fp16`` switch asks for when it is set."""
        if self.fp16 is None:
            return self.precision
        return "fp16" if self.fp16 else "fp32"

    @property
    def family(self) -> str:
        name = self.retriever_name.lower()
        for family in ("e5", "bge", "dpr"):
            if family in name:
                return family
        return "other"

    @property
    def resolved_pooling(self) -> str:
        if self.pooling is not None:
            return self.pooling
        return "cls" if self.family == "bge" else "mean"

    def prefix(self, is_query: bool) -> str:
        if self.family == "e5":
            return "query: " if is_query else "passage: "
        if self.family == "bge" and is_query:
            return BGE_QUERY_INSTRUCTION
        return ""


def _optional_bool(value: str) -> bool | None:
    choices = {"auto": None, "true": True, "false": False}
    if value.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {value!r}")
    return choices[value.lower()]


def add_encoder_arguments(parser: argparse.ArgumentParser, texts: str) -> None:
    """The encoder options shared by the server (``texts="queries"``) and the index builder."""
    defaults = EncoderConfig(model_path="")
    group = parser.add_argument_group("encoder")
    group.add_argument("--pooling", choices=POOLINGS, default=None, help="default: cls for BGE, mean otherwise")
    group.add_argument("--max_length", type=int, default=defaults.max_length, help=f"token limit of {texts}")
    group.add_argument("--device", default=defaults.device, help="auto (GPU if any), cpu, cuda, cuda:1...")
    group.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                       help="auto: fp16 on GPU, fp32 on CPU; bf16: faster on CPUs with bf16 instructions, top 3 as fp32's for ~98% of queries")
    group.add_argument("--fp16", type=_optional_bool, default=None, help="upstream's switch: true = --precision fp16, false = fp32")
    group.add_argument("--encode_chunk_size", type=int, default=defaults.chunk_size, help=f"{texts} per model call, grouped by length")


def encoder_config_from(options: Any) -> EncoderConfig:
    """The EncoderConfig named by ``options``: the parsed command line of the server or the index
    builder, or a ServerConfig (all use the attribute names of the flags)."""
    return EncoderConfig(
        model_path=options.retriever_model,
        retriever_name=options.retriever_name,
        pooling=options.pooling,
        max_length=options.max_length,
        device=options.device,
        fp16=options.fp16,
        precision=options.precision,
        chunk_size=options.encode_chunk_size,
    )
