"""The retrieval stack's command lines as a user meets them: --help shows every default, and each
mistake is one line on stderr and exit 2, found before the index, corpus or encoder loads."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys

import faiss
import numpy as np
import pytest

from local_dense_retriever import encoder_config, index_builder, retrieval_server
from tests.documentation import REPO


@pytest.mark.parametrize("module", [retrieval_server, index_builder])
def test_help_answers_with_every_option_and_its_default(module):
    env = {**os.environ, "RETRIEVAL_API_KEY": "s3cret-from-env"}
    result = subprocess.run([sys.executable, "-m", module.__name__, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "top 3 as fp32's for ~98% of queries (default: auto)" in text  # the help string that crashed
    assert "s3cret-from-env" not in text  # the token is never a shown default
    parser = module.build_parser()
    formatter = parser._get_formatter()
    one_of = {action for group in parser._mutually_exclusive_groups if group.required for action in group._group_actions}
    for action in parser._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS and action.dest != "help":
            assert action.help, f"{action.option_strings} has no description"
            if not (action.required or action in one_of or action.nargs == 0 or action.default is argparse.SUPPRESS):
                assert "default" in formatter._expand_help(action), f"{action.option_strings} does not show its default"


def test_help_shows_the_values_of_the_defaults():
    text = " ".join(retrieval_server.build_parser().format_help().split())
    for shown in ("passages per query when a request gives no topk (default: 3)", "(default: 127.0.0.1)",
                  "(default: 8000)", "(default: intfloat/e5-base-v2)", "beyond this many waiting queries, answer 503 (default: 16384)"):
        assert shown in text
    text = " ".join(index_builder.build_parser().format_help().split())
    assert 'FAISS factory string: "Flat", "HNSW32", "IVF4096,Flat"... (default: Flat)' in text


@pytest.fixture
def files(tmp_path):
    """A corpus, a flat index of 20 8-d vectors, and folders named like models."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "contents": f'"T{i}"\ntext {i}'}) + "\n" for i in range(20)))
    flat = faiss.IndexFlatIP(8)
    flat.add(np.random.default_rng(0).random((20, 8), dtype=np.float32))
    faiss.write_index(flat, str(tmp_path / "flat.index"))
    ivf = faiss.index_factory(8, "IVF2,Flat", faiss.METRIC_INNER_PRODUCT)
    vectors = np.random.default_rng(1).random((20, 8), dtype=np.float32)
    ivf.train(vectors)
    ivf.add(vectors)
    faiss.write_index(ivf, str(tmp_path / "ivf.index"))
    (tmp_path / "all-MiniLM-L6-v2").mkdir()
    return tmp_path


def refusal(capsys, main, argv: list[str]) -> str:
    """What ``main(argv)`` says when it refuses: its one line on stderr, after "error: "."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    return line.split(": error: ", 1)[1]


@pytest.fixture
def nothing_loads(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("loaded before the command line was checked")

    for name in ("CorpusStore", "convert_index"):
        monkeypatch.setattr(index_builder, name, forbidden)
    monkeypatch.setattr("local_dense_retriever.encoder.Encoder", forbidden)  # imported by index_builder.run
    monkeypatch.setattr(retrieval_server, "serve", forbidden)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--from_index", "{d}/missing.index", "--output_path", "{d}/x.index"], "--from_index {d}/missing.index: no such file"),
        (["--from_index", "{d}/flat.index", "--output_path", "{d}/nodir/x.index"],
         "--output_path {d}/nodir/x.index: the folder {d}/nodir does not exist; create it first"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/nodir/x.index"],
         "--output_path {d}/nodir/x.index: the folder {d}/nodir does not exist; create it first"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/x.index", "--embeddings_path", "{d}/nodir/e.npy"],
         "--embeddings_path {d}/nodir/e.npy: the folder {d}/nodir does not exist; create it first"),
        (["--corpus_path", "{d}/nope.jsonl", "--output_path", "{d}/x.index"], "--corpus_path {d}/nope.jsonl: no such file"),
        (["--from_index", "{d}/flat.index", "--output_path", "{d}/flat.index"],
         "--output_path {d}/flat.index is the --from_index file: write the converted index elsewhere"),
        (["--from_index", "{d}/corpus.jsonl", "--output_path", "{d}/x.index"],
         '{d}/corpus.jsonl is not a FAISS index this FAISS can read: Index type 0x6469227b ("{{"id") not recognized'),
        (["--from_index", "{d}/flat.index", "--output_path", "{d}/x.index", "--faiss_type", "PQ3"],
         "--faiss_type 'PQ3': FAISS cannot build it for 8-d vectors: The dimension of the vector (d) should be a multiple "
         "of the number of subquantizers (M) (see the FAISS wiki's 'The index factory')"),
        (["--from_index", "{d}/flat.index", "--output_path", "{d}/x.index", "--faiss_type", "IVF64,Flat"],
         "--faiss_type 'IVF64,Flat': its 64 lists need at least 64 training vectors, but there are 20 (20 vectors, "
         "--train_size 1000000); use fewer lists"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/x.index", "--retriever_model", "/no/such/e5-base"],
         "--retriever_model /no/such/e5-base: no such directory (a Hugging Face model is named org/name)"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/x.index", "--retriever_model", "{d}/all-MiniLM-L6-v2"],
         "cannot tell the family of --retriever_model {d}/all-MiniLM-L6-v2 from its name: pass --retriever_name "
         "(e5, bge, dpr, or another name such as minilm for a model without prefixes, mean pooling)"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/x.index", "--retriever_name", "bge"],
         "--retriever_name bge applies the bge family's prefixes and pooling, but --retriever_model intfloat/e5-base-v2 "
         "is of the e5 family: pass --retriever_name e5"),
        (["--output_path", "{d}/x.index"], "one of the arguments --corpus_path --from_index is required (see --help)"),
        (["--from_index", "{d}/flat.index", "--output_path", "{d}/x.index", "--train_size", "many"],
         "argument --train_size: expected a whole number, got 'many' (see --help)"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/x.index", "--batch_size", "0"],
         "argument --batch_size: must be at least 1, got 0 (see --help)"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/x.index", "--max_length", "0"],
         "argument --max_length: must be at least 1, got 0 (see --help)"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/x.index", "--encode_chunk_size", "-1"],
         "argument --encode_chunk_size: must be at least 1, got -1 (see --help)"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/all-MiniLM-L6-v2", "--retriever_name", "e5"],
         "--output_path {d}/all-MiniLM-L6-v2 is a directory; name the file to write"),
        (["--from_index", "{d}/flat.index", "--output_path", "{d}"], "--output_path {d} is a directory; name the file to write"),
        # Under a regular file: refused for root too, unlike a read-only folder.
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/corpus.jsonl/x.index", "--retriever_name", "e5"],
         "--output_path {d}/corpus.jsonl/x.index: {d}/corpus.jsonl is a file, not a folder"),
        (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}/corpus.jsonl", "--retriever_name", "bm25"],
         "--output_path {d}/corpus.jsonl is a file, but a BM25 index is a folder: name a folder"),
    ],
)
def test_index_builder_refuses_each_mistake_in_one_line_before_any_work(files, nothing_loads, capsys, argv, message):
    before = sorted(files.rglob("*"))
    assert refusal(capsys, index_builder.main, [a.format(d=files) for a in argv]) == message.format(d=files)
    assert sorted(files.rglob("*")) == before  # nothing written


# In a process of its own, as a user runs it: whether torch was imported, then the exit status.
_RUN_AND_REPORT_TORCH = """
import runpy, sys
sys.argv = ["index_builder", *sys.argv[1:]]
try:
    runpy.run_module("local_dense_retriever.index_builder", run_name="__main__")
finally:
    print("torch loaded" if "torch" in sys.modules else "torch not loaded")
"""


@pytest.mark.parametrize("argv, first_line, code", [
    (["--help"], "usage: python -m local_dense_retriever.index_builder [-h]", 0),
    (["--corpus_path", "c.jsonl", "--output_path", "x.index", "--batch_size", "0"],
     "python -m local_dense_retriever.index_builder: error: argument --batch_size: must be at least 1, got 0 (see --help)", 2),
    (["--corpus_path", "{d}/corpus.jsonl", "--output_path", "{d}", "--retriever_name", "e5"],
     "python -m local_dense_retriever.index_builder: error: --output_path {d} is a directory; name the file to write", 2),
])
def test_help_and_mistakes_are_answered_before_torch_loads(files, argv, first_line, code):
    result = subprocess.run([sys.executable, "-c", _RUN_AND_REPORT_TORCH, *[a.format(d=files) for a in argv]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == code
    assert (result.stderr or result.stdout).splitlines()[0] == first_line.format(d=files)
    assert result.stdout.splitlines()[-1] == "torch not loaded"


def test_index_builder_refuses_a_source_whose_vectors_cannot_be_read_back(files, capsys):
    argv = ["--from_index", f"{files}/ivf.index", "--output_path", f"{files}/x.index", "--faiss_type", "SQ8", "--no_progress"]
    assert refusal(capsys, index_builder.main, argv) == (
        "cannot read the vectors back from this IndexIVFFlat (direct map not initialized); convert from a flat index")
    assert not (files / "x.index").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--index_path", "{d}/missing.index"], "--index_path {d}/missing.index: no such file"),
        (["--index_path", "{d}"], "--index_path {d}: is a directory, not a file"),
        (["--corpus_path", "{d}/nope.jsonl"], "--corpus_path {d}/nope.jsonl: no such file"),
        (["--retriever_name", "bm25"], "--index_path {d}/flat.index: no such directory (a BM25 index is the folder index_builder wrote)"),
        (["--corpus_arrow_path", "{d}/nodir/c.arrow"], "--corpus_arrow_path {d}/nodir/c.arrow: the folder {d}/nodir does not exist; create it first"),
        (["--retriever_model", "/no/such/e5-base"], "--retriever_model /no/such/e5-base: no such directory (a Hugging Face model is named org/name)"),
        (["--reranker_model", "./no/such/reranker"], "--reranker_model ./no/such/reranker: no such directory (a Hugging Face model is named org/name)"),
        (["--retriever_model", "{d}/all-MiniLM-L6-v2"],
         "cannot tell the family of --retriever_model {d}/all-MiniLM-L6-v2 from its name: pass --retriever_name "
         "(e5, bge, dpr, or another name such as minilm for a model without prefixes, mean pooling)"),
        (["--retriever_name", "minilm"], "--retriever_name minilm applies the other family's prefixes and pooling, but "
                                         "--retriever_model intfloat/e5-base-v2 is of the e5 family: pass --retriever_name e5"),
        (["--port", "70000"], "argument --port: a port is 0 to 65535, got 70000 (see --help)"),
        (["--port", "http"], "argument --port: a port is a whole number from 0 to 65535, got 'http' (see --help)"),
        (["--max_length", "0"], "argument --max_length: must be at least 1, got 0 (see --help)"),
        (["--topk", "0"], "--topk must be at least 1, got 0"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8' (choose from 'auto', 'fp32', 'bf16', 'fp16') (see --help)"),
    ],
)
def test_the_server_refuses_each_mistake_in_one_line_before_anything_loads(files, nothing_loads, capsys, argv, message):
    base = ["--index_path", f"{files}/flat.index", "--corpus_path", f"{files}/corpus.jsonl", "--port", "0"]
    assert refusal(capsys, retrieval_server.main, base + [a.format(d=files) for a in argv]) == message.format(d=files)


@pytest.mark.skipif(hasattr(faiss, "GpuMultipleClonerOptions"), reason="this faiss has GPU support")
def test_the_server_refuses_faiss_gpu_without_a_gpu_faiss_before_anything_loads(files, nothing_loads, capsys):
    argv = ["--index_path", f"{files}/flat.index", "--corpus_path", f"{files}/corpus.jsonl", "--port", "0", "--faiss_gpu"]
    assert refusal(capsys, retrieval_server.main, argv).startswith("--faiss_gpu needs faiss with GPU support")


def test_a_busy_port_is_refused_before_anything_loads(files, nothing_loads, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--index_path", f"{files}/flat.index", "--corpus_path", f"{files}/corpus.jsonl", "--port", str(port)]
        assert refusal(capsys, retrieval_server.main, argv) == (
            f"cannot listen on 127.0.0.1:{port} (Address already in use); is another server running there? pass another --port")


@pytest.mark.parametrize(
    "host, token, warned",
    [("0.0.0.0", None, True), ("0.0.0.0", "t0ken-0123456789abcdef", False), ("127.0.0.1", None, False)],
)
def test_binding_beyond_loopback_without_a_token_is_warned_about(files, monkeypatch, caplog, host, token, warned):
    served = []
    monkeypatch.setattr(retrieval_server, "serve", lambda config, sock, log_level: served.append(sock.getsockname()) or sock.close() or 0)
    monkeypatch.setattr(retrieval_server, "configure_threads", lambda threads: None)  # this process's OpenMP variables stay
    monkeypatch.delenv("RETRIEVAL_API_KEY", raising=False)
    if token:
        monkeypatch.setenv("RETRIEVAL_API_KEY", token)
    argv = ["--index_path", f"{files}/flat.index", "--corpus_path", f"{files}/corpus.jsonl", "--host", host, "--port", "0"]
    assert retrieval_server.main(argv) == 0 and served[0][0] == host
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == retrieval_server.__name__]
    assert warnings == ([f"listening on {host} without an access token: anyone who can reach this port can query the server; "
                         "set RETRIEVAL_API_KEY (clients send the same value)"] if warned else [])


@pytest.mark.parametrize(
    "name, model, family",
    [
        (None, "intfloat/e5-base-v2", "e5"),
        (None, "intfloat/multilingual-e5-large", "e5"),
        (None, "BAAI/bge-large-en-v1.5", "bge"),
        (None, "facebook/dpr-question_encoder-single-nq-base", "dpr"),
        (None, "/root/.cache/huggingface/hub/models--intfloat--e5-base-v2/snapshots/1c644c92", "e5"),
        (None, "/models/bge-base-en-v1.5", "bge"),
        ("e5", "/ckpt/my_retriever", "e5"),  # the name says what the path does not
        ("minilm", "sentence-transformers/all-MiniLM-L6-v2", "minilm"),
        ("bm25", "intfloat/e5-base-v2", "bm25"),  # BM25 uses no model
        ("E5", "intfloat/e5-base-v2", "E5"),
    ],
)
def test_the_family_comes_from_the_name_or_the_models_name(name, model, family):
    assert encoder_config.resolve_retriever_name(name, model) == family


@pytest.mark.parametrize(
    "name, model, message",
    [
        (None, "sentence-transformers/all-MiniLM-L6-v2", "cannot tell the family of --retriever_model sentence-transformers/all-MiniLM-L6-v2"),
        (None, "/exp/e5/minilm", "cannot tell the family of --retriever_model /exp/e5/minilm"),  # a folder's name is not the model's
        ("e5", "BAAI/bge-base-en-v1.5", "is of the bge family: pass --retriever_name bge"),
        ("minilm", "intfloat/e5-base-v2", "is of the e5 family: pass --retriever_name e5"),
    ],
)
def test_a_family_that_is_unknown_or_contradicts_the_model_is_refused(name, model, message):
    with pytest.raises(ValueError, match=message):
        encoder_config.resolve_retriever_name(name, model)


def test_the_packaged_minilm_is_not_served_as_e5_by_default(files, nothing_loads, capsys):
    from search_r1_slime.demo import minilm_path

    argv = ["--index_path", f"{files}/flat.index", "--corpus_path", f"{files}/corpus.jsonl", "--retriever_model", minilm_path()]
    assert refusal(capsys, retrieval_server.main, argv).startswith(f"cannot tell the family of --retriever_model {minilm_path()}")


# --threads: what the OpenMP runtimes of torch and FAISS were started with, as they report it
# themselves (OMP_DISPLAY_ENV makes each print its settings when it loads, with the encoder). A
# spin count of 0 is what a passive wait policy means; libgomp shows an unset policy as PASSIVE
# too, but spins 300,000 times at every wait.
@pytest.mark.parametrize(
    ("flags", "environment", "expected"),
    [
        ([], {}, (str(len(os.sched_getaffinity(0))), "PASSIVE", "0")),
        (["--threads", "3"], {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "2"}, ("3", "ACTIVE", None)),
    ],
    ids=["default", "--threads and the user's wait policy"],
)
def test_the_encoder_and_faiss_compute_with_threads_that_wait_asleep(flags, environment, expected, tmp_path):
    from tests.test_retrieval_server import DOCS, QUERIES, make_tiny_bert, write_corpus

    model = make_tiny_bert(tmp_path / "model", [c["contents"] for c in DOCS] + QUERIES + ["query:", "passage:"])
    index = faiss.IndexFlatIP(32)  # make_tiny_bert's hidden size
    index.add(np.zeros((len(DOCS), 32), dtype=np.float32))
    faiss.write_index(index, str(tmp_path / "flat.index"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))} | environment | {"OMP_DISPLAY_ENV": "verbose"}
    server = subprocess.Popen(
        [sys.executable, "-m", "local_dense_retriever.retrieval_server", "--index_path", str(tmp_path / "flat.index"),
         "--corpus_path", str(write_corpus(tmp_path / "corpus.jsonl")), "--retriever_name", "e5", "--retriever_model",
         str(model), "--port", "0", *flags],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    runtimes: list[tuple[str, str, str]] = []
    try:
        shown: dict[str, str] = {}
        for line in server.stderr:  # one block per runtime: torch's, then FAISS's
            if found := re.search(r"(OMP_NUM_THREADS|OMP_WAIT_POLICY|GOMP_SPINCOUNT) = '([^']*)'", line):
                shown[found.group(1)] = found.group(2)
            elif "OPENMP DISPLAY ENVIRONMENT END" in line:
                runtimes.append((shown.get("OMP_NUM_THREADS"), shown.get("OMP_WAIT_POLICY"), shown.get("GOMP_SPINCOUNT")))
                if len(runtimes) == 2:
                    break
    finally:
        server.kill()
        server.wait()
    threads, policy, spin_count = expected
    assert [(number, wait) for number, wait, _ in runtimes] == [(threads, policy)] * 2
    if spin_count is not None:
        assert [spins for _, _, spins in runtimes] == [spin_count] * 2
