"""A tiny cross-encoder for rerank tests, built offline like the tiny encoder it starts from."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertForSequenceClassification

from tests.fakes.encoders import make_tiny_bert


def make_tiny_cross_encoder(directory: Path, texts: list[str], *, seed: int = 1, num_labels: int = 1) -> Path:
    """Save a random 1-layer BERT with a one-score classification head (a cross-encoder's shape) and
    a tokenizer knowing every word of ``texts``. Its scores mean nothing, but they are deterministic
    and well spread, so tests can compare the server's order with the model run directly."""
    make_tiny_bert(directory, texts, seed=seed)
    model = BertForSequenceClassification.from_pretrained(directory, num_labels=num_labels)
    # BERT's initial weights (std 0.02) make attention nearly uniform, so every pair would score
    # about the same; larger random weights spread the scores far beyond float noise.
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("weight") and parameter.dim() == 2:
                parameter.normal_(std=0.5)
    model.save_pretrained(directory)
    return directory
