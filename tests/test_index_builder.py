"""index_builder: corpus JSONL -> FAISS index of any factory type, or a bm25s index."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from local_dense_retriever import index_builder
from local_dense_retriever.bm25 import BM25Searcher
from local_dense_retriever.dense import BLAS_THRESHOLD, DenseSearcher, LoadedIndex, load_index
from local_dense_retriever.encoder import Encoder
from local_dense_retriever.encoder_config import EncoderConfig
from tests.fakes.encoders import make_tiny_bert

TEXTS = [f"passage number {w} about {topic}" for w, topic in zip(
    ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"],
    ["rivers", "mountains", "cities", "music", "planets", "metals", "rivers", "books", "ships", "tea", "cats", "rain"],
)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("builder")
    corpus = d / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "contents": f'"T{i}"\n{t}'}) + "\n" for i, t in enumerate(TEXTS)))
    model = make_tiny_bert(d / "model", TEXTS + ['"t0"', "passage:", "query:"] + [f'"t{i}"' for i in range(12)])
    return d, corpus, str(model)


def build(setup, name: str, *extra: str) -> str:
    d, corpus, model = setup
    out = str(d / name)
    argv = ["--corpus_path", str(corpus), "--output_path", out, "--retriever_model", model, "--no_progress", "--retriever_name", "e5", *extra]
    assert index_builder.main(argv) == 0
    return out


def test_embeddings_are_the_encoders_passage_vectors_streamed_to_disk(setup):
    d, _, model = setup
    build(setup, "flat.index", "--keep_embeddings", "--batch_size", "5")
    embeddings = np.load(d / "flat.index.embeddings.npy", mmap_mode="r")
    encoder = Encoder(EncoderConfig(model, retriever_name="e5"))
    contents = [f'"T{i}"\n{t}' for i, t in enumerate(TEXTS)]
    np.testing.assert_allclose(embeddings, encoder.encode(contents, is_query=False), atol=1e-5)


@pytest.mark.parametrize("factory, params, index_type", [
    ("Flat", None, "IndexFlatIP"),
    ("HNSW8", "efSearch=64", "IndexHNSWFlat"),
    ("IVF2,Flat", "nprobe=2", "IndexIVFFlat"),
])
def test_any_factory_string_builds_an_index_the_server_loads(setup, factory, params, index_type):
    d, _, model = setup
    path = build(setup, f"{factory}.index", "--faiss_type", factory, "--keep_embeddings")
    assert not (d / f"{factory}.index.tmp").exists()
    loaded = load_index(path, search_params=params)
    index = loaded.index
    assert loaded.loaded == "mmap" and loaded.file_bytes == (d / f"{factory}.index").stat().st_size
    assert type(faiss.downcast_index(index)).__name__ == index_type and index.ntotal == len(TEXTS)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    vectors = np.load(d / f"{factory}.index.embeddings.npy")
    _, ids = index.search(vectors, 1)
    assert ids[:, 0].tolist() == list(range(len(TEXTS)))  # each passage finds itself first


def test_embeddings_file_is_removed_unless_kept(setup):
    d, _, _ = setup
    build(setup, "nokeep.index")
    assert (d / "nokeep.index").exists() and not (d / "nokeep.index.embeddings.npy").exists()


def test_progress_bars_can_be_switched_off(setup, capsys):
    d, corpus, model = setup
    index_builder.main(["--corpus_path", str(corpus), "--output_path", str(d / "p.index"), "--retriever_model", model, "--retriever_name", "e5"])
    assert "encoding passages" in capsys.readouterr().err
    build(setup, "q.index")
    assert "encoding passages" not in capsys.readouterr().err


def test_the_corpus_conversion_shows_its_progress_unless_switched_off(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "contents": t}) + "\n" for i, t in enumerate(TEXTS)))
    argv = ["--corpus_path", str(corpus), "--retriever_name", "bm25"]
    assert index_builder.main([*argv, "--output_path", str(tmp_path / "quiet"), "--corpus_arrow_path", str(tmp_path / "q.arrow"), "--no_progress"]) == 0
    assert "converting corpus.jsonl to Arrow" not in capsys.readouterr().err
    assert index_builder.main([*argv, "--output_path", str(tmp_path / "shown"), "--corpus_arrow_path", str(tmp_path / "s.arrow")]) == 0
    assert "converting corpus.jsonl to Arrow: 100%" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["encoding", "writing"])
def test_ctrl_c_is_one_line_and_leaves_no_partial_file(setup, tmp_path, capsys, monkeypatch, stage):
    """Ctrl-C arrives as KeyboardInterrupt wherever Python is: while passages are encoded, or
    while FAISS writes the index (after part of the file is on disk)."""
    _, corpus, model = setup
    if stage == "encoding":
        encode = Encoder.encode
        calls = iter(range(100))
        monkeypatch.setattr(Encoder, "encode", lambda self, *a, **k: encode(self, *a, **k) if next(calls) < 1 else (_ for _ in ()).throw(KeyboardInterrupt))
    else:
        def write_part_then_interrupt(index, path):
            open(path, "wb").write(b"partial")
            raise KeyboardInterrupt
        monkeypatch.setattr(faiss, "write_index", write_part_then_interrupt)
    argv = ["--corpus_path", str(corpus), "--corpus_arrow_path", str(tmp_path / "c.arrow"), "--output_path", str(tmp_path / "x.index"),
            "--retriever_model", model, "--retriever_name", "e5", "--batch_size", "5", "--keep_embeddings", "--no_progress"]
    with pytest.raises(SystemExit) as exit_:
        index_builder.main(argv)
    assert exit_.value.code == 130
    err = capsys.readouterr().err  # after the model's loading bar
    assert err.splitlines()[-1] == "python -m local_dense_retriever.index_builder: interrupted; no index written, partial files removed"
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.arrow"]  # the corpus's finished Arrow copy only


def test_a_bad_factory_string_is_refused_before_the_corpus_is_read(setup, capsys, monkeypatch):
    monkeypatch.setattr(index_builder, "CorpusStore", lambda *args, **kwargs: pytest.fail("the corpus was read"))
    with pytest.raises(SystemExit) as exit_:
        build(setup, "bad.index", "--faiss_type", "NoSuchIndex")
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --faiss_type 'NoSuchIndex': FAISS cannot build it for 32-d vectors: could not parse index string "
        "NoSuchIndex (see the FAISS wiki's 'The index factory')")


def test_bm25_index_is_built_into_a_directory(setup):
    path = build(setup, "bm25", "--retriever_name", "bm25")
    searcher = BM25Searcher(path)
    scores, ids = searcher.search(["rivers", "cats and rain"], 3)
    assert ids[0].tolist() == [0, 6, -1]  # the two passages about rivers; nothing else matches
    assert set(ids[1][:2].tolist()) == {10, 11} and ids[1][2] == -1
    assert searcher.size == len(TEXTS)


def test_loading_sets_faiss_to_use_blas_for_query_batches(setup):
    faiss.cvar.distance_compute_blas_threshold = 128000  # faiss-cpu 1.15's shipped default
    load_index(build(setup, "blas.index"))
    assert faiss.cvar.distance_compute_blas_threshold == BLAS_THRESHOLD


def test_an_index_of_another_dimension_is_refused(setup):
    _, _, model = setup
    with pytest.raises(ValueError, match="the encoder makes 32-d vectors but the index holds 7-d vectors"):
        DenseSearcher(Encoder(EncoderConfig(model)), LoadedIndex(faiss.IndexFlatIP(7), "read", 0))


def test_faiss_gpu_without_gpu_support_is_a_clear_error(setup):
    with pytest.raises(RuntimeError, match="--faiss_gpu needs faiss with GPU support"):
        load_index(build(setup, "gpu.index"), gpu=True)


def test_search_params_that_do_not_apply_are_a_clear_error(setup):
    with pytest.raises(ValueError, match="--faiss_search_params 'nprobe=4' does not apply to this IndexFlatIP"):
        load_index(build(setup, "flat_params.index"), search_params="nprobe=4")


def test_search_params_reach_the_index(setup):
    path = build(setup, "hnsw_params.index", "--faiss_type", "HNSW8")
    assert faiss.downcast_index(load_index(path, search_params="efSearch=77").index).hnsw.efSearch == 77


def test_a_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.index does not exist; pass a FAISS index file"):
        load_index(str(tmp_path / "missing.index"))


@pytest.mark.parametrize("factory, params, index_type", [
    ("SQ8", None, "IndexScalarQuantizer"),
    ("HNSW8", "efSearch=64", "IndexHNSWFlat"),
    ("IVF2,PQ4x2,RFlat", "nprobe=2,k_factor_rf=12", "IndexRefineFlat"),
])
def test_a_flat_index_converts_to_any_type_without_the_corpus(setup, factory, params, index_type):
    d, _, _ = setup
    flat = build(setup, "source_flat.index", "--keep_embeddings")
    out = str(d / f"converted_{factory}.index")
    argv = ["--from_index", flat, "--faiss_type", factory, "--output_path", out, "--train_size", "12", "--no_progress"]
    assert index_builder.main(argv) == 0
    index = load_index(out, search_params=params).index
    assert type(faiss.downcast_index(index)).__name__ == index_type and index.ntotal == len(TEXTS)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    _, ids = index.search(np.load(d / "source_flat.index.embeddings.npy"), 1)
    assert ids[:, 0].tolist() == list(range(len(TEXTS)))  # same ids: each passage finds itself first


def test_conversion_reads_the_source_in_chunks(setup, monkeypatch):
    d, _, _ = setup
    flat = build(setup, "chunked_flat.index")
    reads: list[int] = []
    original = index_builder.IndexVectors.__getitem__
    monkeypatch.setattr(index_builder.IndexVectors, "__getitem__", lambda self, key: reads.append(len(got := original(self, key))) or got)
    monkeypatch.setattr(index_builder, "_ADD_CHUNK_ROWS", 5)
    index_builder.convert_index(flat, d / "chunked_sq8.index", factory="SQ8", train_size=8, show_progress=False)
    assert reads == [8, 5, 5, 2]  # the training sample, then the vectors chunk by chunk


def test_converting_needs_a_source_or_a_corpus(setup, capsys):
    with pytest.raises(SystemExit):
        index_builder.main(["--output_path", "x.index"])
    assert "one of the arguments --corpus_path --from_index is required" in capsys.readouterr().err
