"""The rerank stage: a cross-encoder scores (query, passage) pairs, as in Search-R1's hierarchical
retriever (``cross-encoder/ms-marco-MiniLM-L12-v2`` over the first stage's top 10).

A cross-encoder reads the query and the passage together, so it judges relevance better than the
first stage's independent vectors, at the cost of one model pass per pair. The passage is written
as Search-R1's reranker writes it: ``(Title: {title}) {text}``, the title being the first line of
``contents`` (quotes kept, as in the observation the policy reads) and the text the rest.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from local_dense_retriever.encoder import length_sorted_chunks, resolve_device
from local_dense_retriever.precision import choose_dtype

logger = logging.getLogger(__name__)


def passage_text(contents: str) -> str:
    """A corpus ``contents`` (``"Title"\\ntext``) as the reranker reads it."""
    title, _, text = contents.partition("\n")
    return f"(Title: {title}) {text}"


class CrossEncoderReranker:
    """A Hugging Face sequence-classification model with one output: the pair's relevance score.

    Not thread-safe by design: the server calls it from its single batch worker only.
    """

    def __init__(self, model_path: str, *, device: str = "auto", precision: str = "auto", max_length: int = 512, chunk_size: int = 32):
        self.model_path = model_path
        self.device = resolve_device(device)
        self.dtype = choose_dtype(self.device, precision)
        self.max_length = max_length
        self.chunk_size = chunk_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
        # Loaded straight in its dtype, as the encoder is: no fp32 copy of fp16 weights is made first.
        model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=self.dtype)
        if model.config.num_labels != 1:
            raise ValueError(
                f"--reranker_model {model_path} has {model.config.num_labels} output labels; a cross-encoder reranker gives "
                "one relevance score per pair (num_labels=1), e.g. cross-encoder/ms-marco-MiniLM-L12-v2"
            )
        self.model = model.eval().to(self.device)
        logger.info("reranker %s loaded on %s (%s)", model_path, self.device, self.dtype)

    def describe(self) -> dict:
        return {
            "model": self.model_path,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_length": self.max_length,
            "batch_size": self.chunk_size,
        }

    @torch.inference_mode()
    def score(self, queries: list[str], contents: list[str]) -> np.ndarray:
        """The score (the model's logit, higher is more relevant) of each pair ``(queries[i], contents[i])``,
        ``contents`` being corpus passages (``"Title"\ntext``).

        All pairs go through the model in length-sorted groups of ``chunk_size``, so a short pair
        is not padded to the longest passage of the whole batch.
        """
        if not queries:  # e.g. BM25 matched nothing for any query of the batch
            return np.empty(0, dtype=np.float32)
        passages = [passage_text(c) for c in contents]
        encoded = self.tokenizer(queries, passages, max_length=self.max_length, truncation="longest_first")
        scores = np.empty(len(queries), dtype=np.float32)
        for rows, inputs in length_sorted_chunks(self.tokenizer, encoded, self.chunk_size, self.device):
            scores[rows] = self.model(**inputs).logits[:, 0].float().cpu().numpy()
        return scores
