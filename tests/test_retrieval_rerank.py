"""The rerank stage: the first stage's top N, reordered by a cross-encoder, served as Search-R1's format.

The expected order is computed here without the server's code: the tiny cross-encoder is run by
transformers on each (query, "(Title: {title}) {text}") pair alone, and the pairs sorted by score.
"""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import faiss
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from local_dense_retriever.app import create_app
from local_dense_retriever.bm25 import BM25Searcher, build_bm25_index
from local_dense_retriever.corpus import CorpusStore
from local_dense_retriever.encoder import Encoder
from local_dense_retriever.index_builder import build_dense_index
from local_dense_retriever.reranker import passage_text
from local_dense_retriever.retriever import load_retriever
from local_dense_retriever.server_config import ServerConfig
from tests.fakes.cross_encoders import make_tiny_cross_encoder
from tests.fakes.encoders import make_tiny_bert
from tests.test_retrieval_server import DOCS, QUERIES, ids, serve, wait_until_ready, write_corpus

CANDIDATES = 5
TITLES_AND_TEXTS = [f"(Title: {title}) {text}" for title, _, text in (d["contents"].partition("\n") for d in DOCS)]


@pytest.fixture(scope="module")
def reranker_path(tmp_path_factory) -> str:
    return str(make_tiny_cross_encoder(tmp_path_factory.mktemp("cross_encoder"), TITLES_AND_TEXTS + QUERIES))


@pytest.fixture(scope="module")
def rerank_config(tmp_path_factory, reranker_path) -> ServerConfig:
    d = tmp_path_factory.mktemp("dense_rerank")
    model = make_tiny_bert(d / "model", [c["contents"] for c in DOCS] + QUERIES + ["query:", "passage:"])
    config = ServerConfig(index_path=str(d / "flat.index"), corpus_path=str(write_corpus(d / "corpus.jsonl")), topk=2,
                          retriever_name="e5", retriever_model=str(model), reranker_model=reranker_path,
                          retrieval_topk=CANDIDATES, reranker_precision="fp32", reranker_batch_size=3)
    build_dense_index(CorpusStore(config.corpus_path), Encoder(config.encoder_config()), config.index_path, show_progress=False)
    return config


def cross_encoder_order(reranker_path: str, query: str, doc_ids: list[str]) -> tuple[list[str], list[float]]:
    """The candidates sorted by the cross-encoder's score, each pair run through the model alone."""
    tokenizer = AutoTokenizer.from_pretrained(reranker_path)
    model = AutoModelForSequenceClassification.from_pretrained(reranker_path).eval()
    scored = []
    for doc_id in doc_ids:
        contents = DOCS[int(doc_id.removeprefix("doc"))]["contents"]
        with torch.no_grad():
            score = model(**tokenizer(query, passage_text(contents), return_tensors="pt")).logits[0, 0].item()
        scored.append((score, doc_id))
    scored.sort(key=lambda pair: pair[0], reverse=True)
    gaps = [a[0] - b[0] for a, b in zip(scored, scored[1:])]
    assert min(gaps) > 1e-4, "the tiny cross-encoder (nearly) ties: its order would depend on float noise (~1e-6)"
    return [doc_id for _, doc_id in scored], [score for score, _ in scored]


@pytest.fixture(scope="module")
def expected(rerank_config, reranker_path) -> dict[str, tuple[list[str], list[float]]]:
    """query -> (doc ids, scores) in the cross-encoder's order over the dense top CANDIDATES."""
    return {q: cross_encoder_order(reranker_path, q, ids) for q, ids in dense_candidates(rerank_config).items()}


@pytest.fixture(scope="module")
def first_stage(rerank_config) -> dict[str, list[str]]:
    return dense_candidates(rerank_config)


def dense_candidates(config: ServerConfig) -> dict[str, list[str]]:
    """query -> the ids of its dense top CANDIDATES, from the encoder and FAISS directly (all queries in one batch)."""
    encoder = Encoder(config.encoder_config())
    scores, rows = faiss.read_index(config.index_path).search(encoder.encode(QUERIES, is_query=True), CANDIDATES + 1)
    # The server encodes a query alone or beside others, which moves its scores ~1e-8 on some CPUs:
    # which passages make the cut must not depend on that.
    assert (scores[:, CANDIDATES - 1] - scores[:, CANDIDATES]).min() > 1e-4, "the tiny encoder (nearly) ties at the cut"
    return {q: [DOCS[i]["id"] for i in row[:CANDIDATES]] for q, row in zip(QUERIES, rows)}


@pytest.fixture(scope="module")
def client(rerank_config):
    with TestClient(create_app(rerank_config)) as client:
        assert wait_until_ready(client)["status"] == "ready"
        yield client


def test_a_passage_is_written_as_search_r1s_reranker_writes_it():
    assert passage_text('"Paris"\nParis is the capital of France.') == '(Title: "Paris") Paris is the capital of France.'
    assert passage_text('"Two lines"\nfirst\nsecond') == '(Title: "Two lines") first\nsecond'
    assert passage_text("no newline") == "(Title: no newline) "


def test_the_reranker_changes_the_first_stages_order(expected, first_stage):
    # Otherwise the order tests below could pass with the rerank stage doing nothing.
    assert any(expected[q][0][:2] != first_stage[q][:2] for q in QUERIES)


@pytest.mark.parametrize("topk", [1, 2, CANDIDATES])
def test_served_top_k_is_the_cross_encoders_order_with_its_scores(client, expected, topk):
    resp = client.post("/retrieve", json={"queries": QUERIES, "topk": topk, "return_scores": True})
    assert resp.status_code == 200
    for query, items in zip(QUERIES, resp.json()["result"]):
        assert set(items[0]) == {"document", "score"}
        assert [item["document"]["id"] for item in items] == expected[query][0][:topk]
        assert [item["score"] for item in items] == pytest.approx(expected[query][1][:topk], abs=1e-4)
        assert items[0]["document"] == DOCS[int(items[0]["document"]["id"].removeprefix("doc"))]


def test_without_scores_the_result_is_the_documents_in_reranked_order(client, expected):
    resp = client.post("/retrieve", json={"queries": QUERIES[:2], "return_scores": False})
    result = resp.json()["result"]
    assert [ids(docs) for docs in result] == [expected[q][0][:2] for q in QUERIES[:2]]  # server topk is 2
    assert set(result[0][0]) == {"id", "contents"}


def test_topk_beyond_the_candidates_is_a_clear_422(client):
    resp = client.post("/retrieve", json={"queries": [QUERIES[0]], "topk": CANDIDATES + 1})
    assert resp.status_code == 422
    assert f"topk={CANDIDATES + 1} exceeds the {CANDIDATES} candidates the reranker orders per query" in resp.text
    assert "--retrieval_topk" in resp.text


def test_health_names_the_reranker(client, reranker_path):
    body = client.get("/health").json()
    assert body["reranker"] == {"model": reranker_path, "device": "cpu", "dtype": "float32", "max_length": 512,
                                "batch_size": 3, "candidates": CANDIDATES}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"retrieval_topk": 1}, "--retrieval_topk (1) must be at least --topk (2)"),
        ({"reranker_model": None}, "--retrieval_topk sets the candidates a reranker orders; it needs --reranker_model"),
        ({"reranker_precision": "int8"}, "--reranker_precision must be one of"),
        ({"reranker_batch_size": 0}, "--reranker_batch_size at least 1"),
    ],
)
def test_contradicting_rerank_settings_are_refused(rerank_config, changes, message):
    with pytest.raises(ValueError) as error:
        dataclasses.replace(rerank_config, **changes)
    assert message in str(error.value)


def test_the_command_line_refuses_a_topk_beyond_the_candidates(tmp_path, capsys):
    from local_dense_retriever.retrieval_server import main

    (tmp_path / "i").touch()
    (tmp_path / "c").touch()
    with pytest.raises(SystemExit) as stop:
        main(["--index_path", str(tmp_path / "i"), "--corpus_path", str(tmp_path / "c"), "--reranker_model", "m", "--reranking_topk", "11"])
    assert stop.value.code == 2
    assert "--retrieval_topk (10) must be at least --topk (11)" in capsys.readouterr().err


def test_the_command_line_takes_upstreams_rerank_flags():
    from local_dense_retriever.retrieval_server import build_parser, config_from_args

    args = build_parser().parse_args(["--index_path", "i", "--corpus_path", "c", "--retrieval_topk", "10", "--reranking_topk", "3",
                                      "--reranker_model", "cross-encoder/ms-marco-MiniLM-L12-v2", "--reranker_batch_size", "32"])
    config = config_from_args(args)
    assert (config.topk, config.rerank_candidates, config.reranker_batch_size) == (3, 10, 32)
    assert config.reranker_model == "cross-encoder/ms-marco-MiniLM-L12-v2"
    default = config_from_args(build_parser().parse_args(["--index_path", "i", "--corpus_path", "c", "--reranker_model", "m"]))
    assert (default.topk, default.rerank_candidates) == (3, 10)


def test_a_reranker_that_does_not_load_fails_the_start_with_the_reason(tmp_path, rerank_config):
    errors = []
    config = dataclasses.replace(rerank_config, reranker_model=str(tmp_path / "no_such_model"))
    with TestClient(create_app(config, on_load_error=errors.append)) as client:
        body = wait_until_ready(client)
        assert body["status"] == "failed" and "no_such_model" in body["error"]
        assert client.post("/retrieve", json={"queries": ["q"]}).status_code == 503
    assert len(errors) == 1


def test_a_classifier_with_several_labels_is_refused_as_reranker(tmp_path, rerank_config):
    two_labels = make_tiny_cross_encoder(tmp_path / "two_labels", QUERIES, num_labels=2)
    with TestClient(create_app(dataclasses.replace(rerank_config, reranker_model=str(two_labels)))) as client:
        body = wait_until_ready(client)
    assert body["status"] == "failed"
    assert "has 2 output labels; a cross-encoder reranker gives one relevance score per pair" in body["error"]


def test_the_command_line_exits_with_an_error_when_the_reranker_does_not_load(tmp_path, rerank_config):
    from local_dense_retriever.retrieval_server import main

    (tmp_path / "not_a_model").mkdir()
    argv = ["--index_path", rerank_config.index_path, "--corpus_path", rerank_config.corpus_path, "--retriever_name", "e5",
            "--retriever_model", rerank_config.retriever_model, "--reranker_model", str(tmp_path / "not_a_model"),
            "--port", "0", "--log_level", "error"]
    assert main(argv) == 1


def test_bm25_first_stage_is_reranked_too(tmp_path, reranker_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    build_bm25_index(CorpusStore(corpus).contents(0, len(DOCS)), tmp_path / "bm25", show_progress=False)
    config = ServerConfig(index_path=str(tmp_path / "bm25"), corpus_path=str(corpus), retriever_name="bm25", topk=2,
                          reranker_model=reranker_path, retrieval_topk=4, reranker_precision="fp32")
    queries = ["capital of Germany", "the Earth", "zebra crossing"]
    first = BM25Searcher(config.index_path).search(queries, 4).ids
    with TestClient(create_app(config)) as client:
        assert wait_until_ready(client)["searcher"]["index_type"] == "bm25s"
        result = client.post("/retrieve", json={"queries": queries, "topk": 2}).json()["result"]
    for query, row, docs in zip(queries, first, result):
        found = [DOCS[i]["id"] for i in row if i >= 0]
        want = cross_encoder_order(reranker_path, query, found)[0][:2] if len(found) > 1 else found
        assert ids(docs) == want
    assert result[2] == []  # nothing matched, nothing to rerank


def test_without_a_reranker_nothing_changes(rerank_config, first_stage):
    plain = dataclasses.replace(rerank_config, reranker_model=None, retrieval_topk=None)
    with TestClient(create_app(plain)) as client:
        assert "reranker" not in wait_until_ready(client)
        result = client.post("/retrieve", json={"queries": QUERIES, "topk": 3}).json()["result"]
        assert client.post("/retrieve", json={"queries": ["q"], "topk": CANDIDATES + 1}).status_code == 200
    assert [ids(docs) for docs in result] == [first_stage[q][:3] for q in QUERIES]


async def test_concurrent_clients_get_their_own_reranked_results_scored_once_per_batch(rerank_config, expected):
    calls = []

    def load(config):
        retriever = load_retriever(config)
        real = retriever.reranker.score

        def score(queries, contents):
            calls.append(len(queries))
            return real(queries, contents)

        retriever.reranker.score = score
        return retriever

    app = create_app(rerank_config, load=load)
    with serve(app, rerank_config) as url:
        async with aiohttp.ClientSession() as session:
            while (await (await session.get(f"{url}/health")).json())["status"] == "loading":
                await asyncio.sleep(0.02)

            async def ask(i: int):
                query, topk = QUERIES[i % len(QUERIES)], 1 + i % CANDIDATES
                payload = {"queries": [query], "topk": topk, "return_scores": False}
                async with session.post(f"{url}/retrieve", json=payload) as resp:
                    resp.raise_for_status()
                    return query, topk, ids((await resp.json())["result"][0])

            answers = await asyncio.gather(*(ask(i) for i in range(120)))
    for query, topk, got in answers:
        assert got == expected[query][0][:topk]
    batches = app.state.retrieval.batcher.batches_run
    # One scoring call per micro-batch, holding every pair of the batch: N per query.
    assert len(calls) == batches < 120 and sum(calls) == 120 * CANDIDATES
