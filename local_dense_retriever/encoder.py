"""The text encoder shared by the retrieval server (queries) and the index builder (passages).

One code path for both sides: a passage encoded one way and a query another way would silently
lower recall. The conventions per model family live in ``encoder_config``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from local_dense_retriever.encoder_config import POOLINGS, EncoderConfig

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return resolved


def pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, pooler_output: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Reduce token states to one vector per text."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
        # Padding tokens contribute nothing; divide by the real length (clamped for safety).
        return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "pooler":
        if pooler_output is None:
            raise ValueError("pooling 'pooler' needs a model with a pooler head; use 'mean' or 'cls'")
        return pooler_output
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


def length_sorted_chunks(
    tokenizer: PreTrainedTokenizerBase, encoded: BatchEncoding, chunk_size: int, device: torch.device
) -> Iterator[tuple[list[int], BatchEncoding]]:
    """Yield ``(rows, inputs)``: the rows of ``encoded`` (tokenized, not padded) in groups of at most
    ``chunk_size`` of similar token length, each padded to its group's longest and put on ``device``.
    The model then pads to its group's longest text, not to the longest of all."""
    columns = list(encoded.keys())
    order = sorted(range(len(encoded["input_ids"])), key=lambda i: len(encoded["input_ids"][i]))
    for start in range(0, len(order), chunk_size):
        rows = order[start : start + chunk_size]
        features = [{name: encoded[name][i] for name in columns} for i in rows]
        yield rows, tokenizer.pad(features, return_tensors="pt").to(device)


class Encoder:
    """A Hugging Face encoder that turns texts into float32 vectors (numpy, C order).

    Not thread-safe by design: the server calls it from its single batch worker only.
    """

    def __init__(self, config: EncoderConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.fp16 = config.fp16 if config.fp16 is not None else self.device.type == "cuda"
        self.pooling = config.resolved_pooling
        self.tokenizer = AutoTokenizer.from_pretrained(config.model_path, use_fast=True)
        model = AutoModel.from_pretrained(config.model_path)
        model.eval().to(self.device)
        self.model = model.half() if self.fp16 else model
        logger.info(
            "encoder %s loaded on %s (%s, %s pooling, family %s)",
            config.model_path, self.device, "fp16" if self.fp16 else "fp32", self.pooling, config.family,
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        """Encode ``texts`` (queries or passages) into an array of shape ``(len(texts), dim)``.

        Texts are run through the model in groups of similar token length (``chunk_size`` at a
        time), so a batch is padded to its group's longest text, not to the longest of all: with
        question-like queries that saves about a third of the model's work.
        """
        prefix = self.config.prefix(is_query)
        encoded = self.tokenizer([prefix + text for text in texts], max_length=self.config.max_length, truncation=True)
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows, inputs in length_sorted_chunks(self.tokenizer, encoded, self.config.chunk_size, self.device):
            vectors[rows] = self._forward(inputs)
        return vectors

    def _forward(self, inputs) -> np.ndarray:
        output = self.model(**inputs, return_dict=True)
        vectors = pool(output.last_hidden_state, inputs["attention_mask"], getattr(output, "pooler_output", None), self.pooling)
        vectors = vectors.float()
        if self.config.family != "dpr":
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.cpu().numpy()
