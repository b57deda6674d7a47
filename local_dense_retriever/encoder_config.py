"""Encoder settings shared by the retrieval server (queries) and the index builder (passages).

One code path for both sides matters: a passage encoded one way and a query another way would
silently lower recall. The conventions follow the models' own model cards:

* E5 (``intfloat/e5-*``): ``"query: "`` / ``"passage: "`` prefixes, mean pooling, L2 norm.
* BGE (``BAAI/bge-*``): an instruction before queries only, CLS pooling, L2 norm.
* anything else: no prefix, the pooling given (mean by default), L2 norm (except DPR, whose
  scores are unnormalised inner products, as upstream).

The family is read from ``--retriever_name`` (a substring match, as upstream does); the command
lines check it against the family the model's name shows (``resolve_retriever_name``). This module
imports no torch, so a BM25 server and the command lines stay light.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal

from local_dense_retriever.cli import positive_int

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
        return family_of(self.retriever_name)

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


FAMILIES: tuple[str, ...] = ("e5", "bge", "dpr")


def family_of(retriever_name: str) -> str:
    """The family whose conventions ``retriever_name`` selects: e5, bge, dpr, or other."""
    name = retriever_name.lower()
    return next((family for family in FAMILIES if family in name), "other")


def model_family(model_path: str) -> str | None:
    """The family a model's name shows (``intfloat/e5-base-v2``: e5), None when it shows none.

    Only the model's own name counts, as whole words, not the folders it sits in (a local copy's
    folder name; in the Hugging Face cache, the ``models--org--name`` folder above ``snapshots/``).
    """
    parts = PurePath(model_path).parts
    name = parts[-3] if len(parts) >= 3 and parts[-2] == "snapshots" else (parts[-1] if parts else "")
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    found = [family for family in FAMILIES if family in words]
    return found[0] if len(found) == 1 else None


def resolve_retriever_name(retriever_name: str | None, model_path: str) -> str:
    """``--retriever_name``, or (not given) the family ``model_path``'s name shows; raises ValueError
    on a name whose family contradicts the model's, or when neither tells the family.

    The family decides the query and passage prefixes and the pooling, and a wrong one lowers recall
    without any error, so it is never guessed.
    """
    shown = model_family(model_path)
    if retriever_name is None:
        if shown is None:
            raise ValueError(
                f"cannot tell the family of --retriever_model {model_path} from its name: pass --retriever_name "
                "(e5, bge, dpr, or another name such as minilm for a model without prefixes, mean pooling)"
            )
        return shown
    family = family_of(retriever_name)
    if shown is not None and family != shown and retriever_name.lower() != "bm25":
        raise ValueError(
            f"--retriever_name {retriever_name} applies the {family} family's prefixes and pooling, "
            f"but --retriever_model {model_path} is of the {shown} family: pass --retriever_name {shown}"
        )
    return retriever_name


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
    group.add_argument("--max_length", type=positive_int, default=defaults.max_length, help=f"token limit of {texts}")
    group.add_argument("--device", default=defaults.device, help="auto (GPU if any), cpu, cuda, cuda:1...")
    group.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                       help="auto: fp16 on GPU, fp32 on CPU; bf16: faster on CPUs with bf16 instructions, top 3 as fp32's for ~98%% of queries")
    group.add_argument("--fp16", type=_optional_bool, default=None, help="upstream's switch: true = --precision fp16, false = fp32 (default: unset, --precision decides)")
    group.add_argument("--encode_chunk_size", type=positive_int, default=defaults.chunk_size, help=f"{texts} per model call, grouped by length")


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
