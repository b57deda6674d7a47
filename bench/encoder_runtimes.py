"""Query encoders on CPU: torch fp32 (the baseline), torch bf16 and ONNX Runtime fp32 / int8.

    pip install -q onnx onnxruntime   # not project dependencies: this benchmark alone needs them
    python -m bench.encoder_runtimes [--runs 3] [--queries 2000] [--batch 256] [--chunk_size 32]

Real text (bench/realtext.py, needs ``apt-get install -y wordnet-base``): WordNet usage examples as
queries, a flat inner-product index of 50,000 WordNet synsets encoded by torch fp32 (cached under
bench/_work/). Every runtime goes through ``local_dense_retriever.encoder.Encoder.encode``: the same
tokenisation, length-sorted chunks, mean pooling and L2 normalisation; only the model call differs.
The ONNX model is the packaged all-MiniLM-L6-v2 exported with ``torch.onnx.export`` (cached under
bench/_work/), run with graph optimisation level ALL and 2 intra-op threads; "ORT fused" is the
same model after ONNX Runtime's BERT optimiser (fused attention and layer norms); int8 is the plain
export's ``quantize_dynamic`` copy (int8 weights per output channel, activations quantised per call).

Per run and runtime: queries/s encoding ``--queries`` queries in batches of ``--batch`` (in-process,
after one warm-up batch), and the share of queries whose top 3 equal torch fp32's (ids in order, and
as sets). Target for a replacement encoder: >= 1.3x torch fp32's queries/s with >= 99% of top 3
equal in order.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import realtext  # noqa: E402
from search_r1_slime.demo import minilm_path  # noqa: E402

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _OrtModel:
    """Stands in for the Hugging Face model inside ``Encoder``: same call, an ONNX Runtime session behind it."""

    def __init__(self, session, config):
        self.session = session
        self.config = config  # Encoder.dim reads hidden_size from it

    def __call__(self, return_dict: bool = True, **inputs):
        import torch

        feed = {name: inputs[name].numpy() for name in INPUTS}
        (hidden,) = self.session.run(["last_hidden_state"], feed)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))


def export_onnx(model, path: Path) -> Path:
    """The model's last hidden state as an ONNX graph with dynamic batch and sequence axes (cached)."""
    import torch

    if path.exists():
        return path

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in INPUTS)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(LastHiddenState(model).eval(), example, str(path), input_names=list(INPUTS),
                      output_names=["last_hidden_state"], dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return path


def fused_onnx(model_path: str, path: Path) -> Path:
    """The model exported with eager attention, whose pattern ONNX Runtime's BERT optimiser fuses into
    Attention, SkipLayerNormalization and BiasGelu nodes (the default export's attention it does not fuse; cached)."""
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    if not path.exists():
        eager = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
        unfused = export_onnx(eager, path.with_name(path.stem + ".eager.onnx"))
        config = eager.config
        optimize_model(str(unfused), model_type="bert", num_heads=config.num_attention_heads,
                       hidden_size=config.hidden_size).save_model_to_file(str(path))
    return path


def quantize_int8(fp32_path: Path) -> Path:
    """Dynamic int8 quantisation of the exported graph (cached): int8 weights, one scale per output
    channel (measured: about twice the top-3 agreement of one scale per tensor, and faster)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = fp32_path.with_name(fp32_path.stem + ".int8_per_channel.onnx")
    if not path.exists():
        quantize_dynamic(str(fp32_path), str(path), weight_type=QuantType.QInt8, per_channel=True)
    return path


def ort_encoder(base, onnx_path: Path, threads: int):
    """A copy of ``base`` (an Encoder) whose model call runs ``onnx_path`` in ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    encoder = copy.copy(base)
    encoder.model = _OrtModel(session, base.model.config)
    return encoder


def encoders(args: argparse.Namespace) -> dict[str, object]:
    """Runtime name -> an object with ``encode(texts, is_query=...)``; torch fp32 first."""
    from local_dense_retriever.encoder import Encoder
    from local_dense_retriever.encoder_config import EncoderConfig

    def torch_encoder(precision: str) -> Encoder:
        return Encoder(EncoderConfig(minilm_path(), retriever_name="minilm", device="cpu", precision=precision,
                                     chunk_size=args.chunk_size))

    fp32 = torch_encoder("fp32")
    found = {"torch fp32": fp32, "torch bf16": torch_encoder("bf16")}
    onnx_fp32 = export_onnx(fp32.model, args.workdir / "minilm_l6_v2.onnx")
    found["ORT fp32"] = ort_encoder(fp32, onnx_fp32, args.threads)
    found["ORT fused"] = ort_encoder(fp32, fused_onnx(minilm_path(), args.workdir / "minilm_l6_v2.fused.onnx"), args.threads)
    if not args.no_int8:
        found["ORT int8"] = ort_encoder(fp32, quantize_int8(onnx_fp32), args.threads)
    return found


def timed_encode(encode: Callable[[list[str]], np.ndarray], texts: list[str], batch: int) -> tuple[np.ndarray, float]:
    """All of ``texts``' vectors, in batches of ``batch``, and the queries/s (after one warm-up batch)."""
    encode(texts[:batch])
    start = time.perf_counter()
    vectors = np.concatenate([encode(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    return vectors, len(texts) / (time.perf_counter() - start)


def measure(runtimes: dict[str, object], index, texts: list[str], batch: int) -> dict[str, tuple[float, float, float]]:
    """Runtime -> (queries/s, share of top 3 equal to torch fp32's in order, share equal as sets)."""
    results = {}
    reference = None
    for name, encoder in runtimes.items():
        vectors, rate = timed_encode(lambda chunk: encoder.encode(chunk, is_query=True), texts, batch)
        _, top3 = index.search(vectors, 3)
        if reference is None:
            reference = top3
        in_order = float((top3 == reference).all(axis=1).mean())
        as_sets = float((np.sort(top3, axis=1) == np.sort(reference, axis=1)).all(axis=1).mean())
        results[name] = (rate, in_order, as_sets)
    return results


# What a replacement for torch fp32 must reach (module docstring).
TARGET_SPEEDUP = 1.3
TARGET_IN_ORDER = 0.99


def span(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return format(low, fmt) if format(low, fmt) == format(high, fmt) else f"{format(low, fmt)}-{format(high, fmt)}"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.encoder_runtimes", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--queries", type=int, default=2000, help="WordNet usage examples encoded per runtime and run")
    p.add_argument("--passages", type=int, default=50_000, help="WordNet synsets in the flat index")
    p.add_argument("--batch", type=int, default=256, help="queries per encode call")
    p.add_argument("--chunk_size", type=int, default=32, help="queries per model call (EncoderConfig.chunk_size)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--no_int8", action="store_true", help="skip ONNX Runtime int8")
    p.add_argument("--workdir", type=Path, default=ROOT / "bench" / "_work")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss
    import torch

    runtimes = encoders(args)
    corpus, texts = realtext.build(args.workdir, args.passages, args.queries)
    index = faiss.IndexFlatIP(runtimes["torch fp32"].dim)
    index.add(realtext.passage_embeddings(corpus, lambda chunk: runtimes["torch fp32"].encode(chunk, is_query=False)))
    print(f"{len(texts)} WordNet queries, flat index of {index.ntotal} passages, batches of {args.batch}, "
          f"chunk_size {args.chunk_size}, torch {torch.get_num_threads()} threads, ORT {args.threads} threads, "
          f"{os.cpu_count()} cores, {args.runs} runs")
    runs = []
    for run in range(args.runs):
        runs.append(measure(runtimes, index, texts, args.batch))
        print(f"run {run + 1}: " + ", ".join(f"{name} {rate:.0f} q/s" for name, (rate, _, _) in runs[-1].items()))
    base = [r["torch fp32"][0] for r in runs]
    print(f"\n{'runtime':12s} {'queries/s':>11s} {'x torch fp32':>13s} {'top 3 in order':>15s} {'top 3 as sets':>14s}")
    for name in runtimes:
        rates = [r[name][0] for r in runs]
        print(f"{name:12s} {span(rates, '.0f'):>11s} {span([x / b for x, b in zip(rates, base)], '.2f'):>13s} "
              f"{span([r[name][1] * 100 for r in runs], '.1f') + '%':>15s} {span([r[name][2] * 100 for r in runs], '.1f') + '%':>14s}")
    for name in list(runtimes)[1:]:
        speedup = min(r[name][0] / r["torch fp32"][0] for r in runs)
        in_order = min(r[name][1] for r in runs)
        ok = speedup >= TARGET_SPEEDUP and in_order >= TARGET_IN_ORDER
        print(f"{'PASS' if ok else 'FAIL'} {name}: {speedup:.2f}x torch fp32's queries/s in its worst run (target >= {TARGET_SPEEDUP}x), "
              f"top 3 in order for {in_order:.1%} (target >= {TARGET_IN_ORDER:.0%})")


if __name__ == "__main__":
    main()
