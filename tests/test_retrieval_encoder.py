"""Encoder conventions (prefixes, pooling, normalisation, devices) on a tiny offline BERT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from local_dense_retriever import precision as precision_module
from local_dense_retriever.encoder import Encoder, resolve_device
from local_dense_retriever.encoder_config import BGE_QUERY_INSTRUCTION, EncoderConfig
from local_dense_retriever.precision import choose_dtype
from tests.fakes.encoders import make_tiny_bert

TEXTS = ["paris is the capital of france", "mount everest is in nepal", "short"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    prefixes = ["query:", "passage:", BGE_QUERY_INSTRUCTION]
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), TEXTS + prefixes))


def reference(model_dir: str, text: str, pooling: str, normalise: bool = True) -> np.ndarray:
    """The vector computed by hand for one text (no padding involved)."""
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        states = model(**tokenizer([text], return_tensors="pt")).last_hidden_state[0]
    vector = states.mean(dim=0) if pooling == "mean" else states[0]
    if normalise:
        vector = vector / vector.norm()
    return vector.numpy()


@pytest.mark.parametrize(
    "name, is_query, prefix, pooling",
    [
        ("e5", True, "query: ", "mean"),
        ("e5", False, "passage: ", "mean"),
        ("bge", True, BGE_QUERY_INSTRUCTION, "cls"),
        ("bge", False, "", "cls"),
        ("minilm", True, "", "mean"),
        ("minilm", False, "", "mean"),
    ],
)
def test_family_prefix_and_pooling(model_dir, name, is_query, prefix, pooling):
    encoder = Encoder(EncoderConfig(model_dir, retriever_name=name, precision="fp32"))
    got = encoder.encode([TEXTS[0]], is_query=is_query)
    np.testing.assert_allclose(got[0], reference(model_dir, prefix + TEXTS[0], pooling), atol=1e-5)


def test_pooling_option_overrides_the_family_default(model_dir):
    encoder = Encoder(EncoderConfig(model_dir, retriever_name="my-model", pooling="cls", precision="fp32"))
    np.testing.assert_allclose(encoder.encode([TEXTS[1]], is_query=True)[0], reference(model_dir, TEXTS[1], "cls"), atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, 64])
def test_padding_and_length_grouping_do_not_change_a_vector_or_its_row(model_dir, chunk_size):
    encoder = Encoder(EncoderConfig(model_dir, retriever_name="e5", chunk_size=chunk_size))
    batch = encoder.encode(TEXTS, is_query=True)
    alone = np.stack([encoder.encode([t], is_query=True)[0] for t in TEXTS])
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_vectors_are_unit_length_float32_c_order_on_cpu(model_dir):
    encoder = Encoder(EncoderConfig(model_dir, retriever_name="e5"))
    vectors = encoder.encode(TEXTS, is_query=False)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous and vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.device.type == "cpu"  # no GPU here


def test_dpr_vectors_are_not_normalised(model_dir):
    encoder = Encoder(EncoderConfig(model_dir, retriever_name="dpr", pooling="cls", precision="fp32"))
    np.testing.assert_allclose(encoder.encode([TEXTS[0]], is_query=True)[0], reference(model_dir, TEXTS[0], "cls", normalise=False), atol=1e-5)


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        Encoder(EncoderConfig(model_dir, device="cuda"))


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        EncoderConfig("unused", pooling="max")


@pytest.mark.parametrize("device, native_bf16, precision, dtype", [
    ("cuda", True, "auto", torch.float16),
    ("cpu", True, "auto", torch.float32),
    ("cpu", False, "auto", torch.float32),
    ("cpu", True, "bf16", torch.bfloat16),
    ("cpu", True, "fp32", torch.float32),
    ("cuda", False, "bf16", torch.bfloat16),
    ("cpu", True, "fp16", torch.float16),
])
def test_precision_auto_is_fp16_on_gpu_and_fp32_on_cpu_other_precisions_are_forced(monkeypatch, device, native_bf16, precision, dtype):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native_bf16)
    assert choose_dtype(torch.device(device), precision) is dtype


@pytest.mark.parametrize("fp16, precision, used", [(True, "auto", "fp16"), (False, "auto", "fp32"), (None, "bf16", "bf16")])
def test_upstreams_fp16_switch_still_works(model_dir, fp16, precision, used):
    encoder = Encoder(EncoderConfig(model_dir, fp16=fp16, precision=precision, device="cpu"))
    dtypes = {p.dtype for p in encoder.model.parameters()}
    assert encoder.precision == used and choose_dtype(encoder.device, used) in dtypes


def test_contradicting_fp16_and_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="--fp16 False contradicts --precision bf16"):
        EncoderConfig("unused", fp16=False, precision="bf16")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        EncoderConfig("unused", precision="int4")


def test_bf16_finds_fp32s_top3_for_99_percent_of_queries_on_the_demo_corpus():
    """The packaged MiniLM over the demo's 326 passages; a query is a passage's second sentence."""
    from search_r1_slime.demo import DEMO_CORPUS, minilm_path

    passages = [json.loads(line)["contents"] for line in DEMO_CORPUS.read_text().splitlines()]
    queries = [p.split(". ")[1] if ". " in p else p.split("\n")[0] for p in passages]
    fp32, bf16 = (Encoder(EncoderConfig(minilm_path(), retriever_name="minilm", device="cpu", precision=p)) for p in ("fp32", "bf16"))
    docs = fp32.encode(passages, is_query=False)
    top3 = [np.argsort(-enc.encode(queries, is_query=True) @ docs.T, axis=1)[:, :3] for enc in (fp32, bf16)]
    agreement = (top3[0] == top3[1]).all(axis=1).mean()
    assert agreement >= 0.99, f"bf16's top 3 equal fp32's for only {agreement:.1%} of {len(queries)} queries"


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, caplog):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert choose_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    assert "bf16 is emulated and slower than fp32" in caplog.text


def test_a_device_torch_does_not_know_is_one_line():
    with pytest.raises(ValueError) as error:
        resolve_device("tpu")
    assert str(error.value) == "--device 'tpu' is not a device torch knows: use auto, cpu, cuda or cuda:N"
