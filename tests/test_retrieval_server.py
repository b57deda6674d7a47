"""The retrieval server over HTTP: Search-R1's request/response, validation, states, concurrency.

A tiny random BERT and a flat index over a small corpus stand in for E5 and wiki-18: the answers
are checked against a direct FAISS search with the same encoder, so any mix-up shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from pathlib import Path

import aiohttp
import faiss
import pytest
import uvicorn
from fastapi.testclient import TestClient

from local_dense_retriever.app import create_app
from local_dense_retriever.bm25 import build_bm25_index
from local_dense_retriever.corpus import CorpusStore
from local_dense_retriever.http_limits import uvicorn_config
from local_dense_retriever.encoder import Encoder
from local_dense_retriever.index_builder import build_dense_index
from local_dense_retriever.retriever import load_retriever
from local_dense_retriever.server_config import ServerConfig
from tests.fakes.encoders import make_tiny_bert

FACTS = [
    ("Paris", "Paris is the capital of France."),
    ("Berlin", "Berlin is the capital of Germany."),
    ("Mount Everest", "Mount Everest is the highest mountain on Earth."),
    ("Nile", "The Nile is a long river in Africa."),
    ("Python", "Python is a programming language."),
    ("Tea", "Tea is made from the leaves of a plant."),
    ("Moon", "The Moon orbits the Earth."),
    ("Gold", "Gold is a yellow metal."),
]
DOCS = [{"id": f"doc{i}", "contents": f'"{title}"\n{text}'} for i, (title, text) in enumerate(FACTS)]
QUERIES = ["capital of france", "highest mountain", "river in africa", "yellow metal", "programming language"]


def write_corpus(path: Path) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return path


@pytest.fixture(scope="module")
def dense_config(tmp_path_factory) -> ServerConfig:
    d = tmp_path_factory.mktemp("dense")
    model = make_tiny_bert(d / "model", [c["contents"] for c in DOCS] + QUERIES + ["query:", "passage:"])
    config = ServerConfig(index_path=str(d / "flat.index"), corpus_path=str(write_corpus(d / "corpus.jsonl")),
                          topk=2, retriever_name="e5", retriever_model=str(model), max_queries_per_request=8,
                          max_query_chars=100)
    build_dense_index(CorpusStore(config.corpus_path), Encoder(config.encoder_config()), config.index_path, show_progress=False)
    return config


@pytest.fixture(scope="module")
def expected(dense_config):
    """query -> (doc ids, scores) for k=len(DOCS), from the encoder and FAISS directly."""
    encoder = Encoder(dense_config.encoder_config())
    index = faiss.read_index(dense_config.index_path)
    scores, ids = index.search(encoder.encode(QUERIES, is_query=True), len(DOCS))
    # Tests ask for up to 4 passages, one query at a time or several: the order of the top 5 must not
    # depend on float noise (a query's scores move ~1e-8 with the batch it is encoded in on some CPUs).
    assert (scores[:, :4] - scores[:, 1:5]).min() > 1e-4, "the tiny encoder (nearly) ties two passages"
    return {q: ([DOCS[i]["id"] for i in row], s.tolist()) for q, row, s in zip(QUERIES, ids, scores)}


def wait_until_ready(client: TestClient) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        resp = client.get("/health")
        if resp.json()["status"] != "loading":
            return resp.json()
        time.sleep(0.02)
    raise AssertionError("server did not finish loading")


@pytest.fixture(scope="module")
def client(dense_config):
    with TestClient(create_app(dense_config)) as client:
        assert wait_until_ready(client)["status"] == "ready"
        yield client


def ids(docs: list[dict]) -> list[str]:
    return [d["id"] for d in docs]


def without_scores(items: list[dict]) -> list[dict]:
    """A result list with its scores taken out (scores are compared within a tolerance)."""
    return [{key: value for key, value in item.items() if key != "score"} for item in items]


def test_health_reports_what_is_loaded(client, dense_config):
    resp = client.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ready" and body["passages"] == len(DOCS)
    assert body["searcher"]["index_type"] == "IndexFlatIP" and body["searcher"]["device"] == "cpu"
    assert body["searcher"]["index_loaded"] == "mmap" and body["searcher"]["index_device"] == "cpu"
    assert body["searcher"]["index_bytes"] == Path(dense_config.index_path).stat().st_size
    assert body["searcher"]["precision"] == "fp32"  # auto on CPU
    assert body["config"]["retriever_model"] == dense_config.retriever_model


def test_results_without_scores_are_documents_in_search_order(client, expected):
    resp = client.post("/retrieve", json={"queries": [QUERIES[0]], "topk": 3, "return_scores": False})
    assert resp.status_code == 200
    (docs,) = resp.json()["result"]
    assert ids(docs) == expected[QUERIES[0]][0][:3]
    assert docs[0] == DOCS[int(docs[0]["id"].removeprefix("doc"))]  # {"id", "contents"} as in the corpus


def test_results_with_scores_wrap_each_document(client, expected):
    resp = client.post("/retrieve", json={"queries": [QUERIES[1]], "topk": 3, "return_scores": True})
    (items,) = resp.json()["result"]
    assert [item["document"]["id"] for item in items] == expected[QUERIES[1]][0][:3]
    assert [item["score"] for item in items] == pytest.approx(expected[QUERIES[1]][1][:3], abs=1e-5)
    assert set(items[0]) == {"document", "score"}


@pytest.mark.parametrize("return_scores", [False, True])
def test_two_queries_get_their_own_results(client, expected, return_scores):
    # Upstream unpacks (results, scores) from the two result lists when there are exactly two queries.
    queries = QUERIES[2:4]
    resp = client.post("/retrieve", json={"queries": queries, "topk": 2, "return_scores": return_scores})
    result = resp.json()["result"]
    assert len(result) == 2
    for query, items in zip(queries, result):
        docs = [item["document"] for item in items] if return_scores else items
        assert ids(docs) == expected[query][0][:2]


@pytest.mark.parametrize("body", [{"queries": [QUERIES[0]]}, {"queries": [QUERIES[0]], "topk": None}])
def test_topk_defaults_to_the_server_topk(client, expected, body):
    (docs,) = client.post("/retrieve", json=body).json()["result"]
    assert ids(docs) == expected[QUERIES[0]][0][:2]  # dense_config.topk == 2


def test_a_topk_beyond_the_corpus_gives_every_passage(client, expected):
    (docs,) = client.post("/retrieve", json={"queries": [QUERIES[0]], "topk": 9}).json()["result"]
    assert ids(docs) == expected[QUERIES[0]][0]  # all 8, in search order


def test_unknown_fields_are_ignored_like_upstream(client):
    resp = client.post("/retrieve", json={"queries": [QUERIES[0]], "topk": 1, "return_scores": False, "mode": "x"})
    assert resp.status_code == 200 and len(resp.json()["result"][0]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"queries": [QUERIES[0]], "topk": 2, "return_scores": True},  # Search-R1's trainer and inference script, verl's search tool
        {"queries": [QUERIES[0]], "topk": 2, "return_scores": False},  # slime's example client
        {"queries": [QUERIES[0]]},
    ],
)
def test_the_bodies_search_r1_clients_send_are_served(client, body):
    resp = client.post("/retrieve", json=body)
    assert resp.status_code == 200 and len(resp.json()["result"][0]) == 2


@pytest.mark.parametrize(
    "field, meant",
    [("top_k", "topk"), ("topK", "topk"), ("top-k", "topk"), ("TOPK", "topk"), ("return_score", "return_scores"),
     ("returnScores", "return_scores"), ("query", "queries"), ("Queries", "queries")],
)
def test_a_misspelt_field_gets_a_422_naming_the_right_one(client, field, meant):
    body = {"queries": [QUERIES[0]], field: 1} if meant != "queries" else {field: [QUERIES[0]]}
    resp = client.post("/retrieve", json=body)
    assert resp.status_code == 422
    assert resp.json() == {"detail": [{"type": "value_error", "loc": [],
                                       "msg": f"Value error, {field!r} is not a field: did you mean {meant!r}?"}]}


def test_the_schema_publishes_the_rule_for_misspelt_fields(client):
    # What the OpenAPI document says is refused is exactly what the server refuses.
    pattern = re.compile(client.get("/openapi.json").json()["paths"]["/retrieve"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["propertyNames"]["not"]["pattern"])
    names = ["queries", "topk", "return_scores", "top_k", "Top_K", "top k", "topkk", "k", "top_n", "query", "querys",
             "QUERIES", "return_score", "Return-Scores", "scores", "mode", "docs", "documents", "rerank_topk"]
    refused = [name for name in names if client.post("/retrieve", json={"queries": ["q"], name: 1}).status_code == 422
               and name not in ("queries", "topk", "return_scores")]
    assert refused == [name for name in names if pattern.search(name)]
    assert refused == ["top_k", "Top_K", "top k", "query", "querys", "QUERIES", "return_score", "Return-Scores"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"queries": []}, "at least 1 item"),
        ({"queries": [3]}, "valid string"),
        ({"queries": "capital of france"}, "valid array"),
        ({}, "Field required"),
        ({"queries": ["q"] * 9}, "at most 8 items"),
        ({"queries": ["x" * 101]}, "queries[0] has 101 characters; the limit is 100"),
        ({"queries": ["q"], "topk": 0}, "greater than or equal to 1"),
        ({"queries": ["q"], "topk": "3"}, "valid integer"),
        ({"queries": ["q"], "topk": 2.5}, "valid integer"),
        ({"queries": ["q"], "topk": True}, "valid integer"),
        ({"queries": ["q"], "topk": 101}, "less than or equal to 100"),  # --max_topk
        ({"queries": ["q"], "return_scores": "yes"}, "valid boolean"),
        ({"queries": ["q"], "return_scores": 1}, "valid boolean"),
    ],
)
def test_invalid_requests_get_a_clear_422_and_the_server_is_unharmed(client, body, message):
    resp = client.post("/retrieve", json=body)
    assert resp.status_code == 422
    assert message in resp.text
    assert client.post("/retrieve", json={"queries": ["q"], "topk": 1}).status_code == 200


@pytest.mark.parametrize("return_scores", [False, True])
def test_blank_queries_get_an_empty_list_and_the_others_exactly_their_own_passages(client, return_scores):
    # A client that gathers many trajectories' queries into one request loses none to a blank one.
    def ask(queries: list[str]) -> list:
        resp = client.post("/retrieve", json={"queries": queries, "topk": 3, "return_scores": return_scores})
        assert resp.status_code == 200
        return resp.json()["result"]

    alone = [ask([query])[0] for query in QUERIES[:2]]
    served = client.get("/health").json()["served"]["queries"]
    mixed = ask(["", QUERIES[0], " \t\n\u3000", QUERIES[1], "\u2003"])
    assert [mixed[i] for i in (0, 2, 4)] == [[], [], []]
    for own, items in zip(alone, mixed[1::2]):
        # The same passages; a score may differ in its last bits, as a query encoded beside a longer
        # one is padded and takes other kernel paths on some CPUs (seen ~1e-8 without AVX-512).
        assert without_scores(items) == without_scores(own)
        if return_scores:
            assert [item["score"] for item in items] == pytest.approx([item["score"] for item in own], abs=1e-5)
    assert client.get("/health").json()["served"]["queries"] == served + 2  # the blank ones were not searched
    assert ask(["", "   "]) == [[], []]


def test_a_body_that_is_not_json_gets_a_422(client):
    resp = client.post("/retrieve", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422 and "Invalid JSON" in resp.text


def test_bm25_returns_exact_ids_and_drops_non_matching_passages(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    build_bm25_index(CorpusStore(corpus).contents(0, len(DOCS)), tmp_path / "bm25", show_progress=False)
    config = ServerConfig(index_path=str(tmp_path / "bm25"), corpus_path=str(corpus), retriever_name="bm25", topk=3)
    with TestClient(create_app(config)) as client:
        assert wait_until_ready(client)["searcher"]["index_type"] == "bm25s"
        body = {"queries": ["capital of Germany", "mountains", "zebra crossing"], "return_scores": True}
        result = client.post("/retrieve", json=body).json()["result"]
    # "capital" matches Paris and Berlin, "germany" only Berlin; "mountains" is stemmed to "mountain".
    assert [[item["document"]["id"] for item in items] for items in result] == [["doc1", "doc0"], ["doc2"], []]
    assert result[0][0]["score"] > result[0][1]["score"] > 0


def test_health_and_retrieve_answer_503_while_loading(dense_config):
    release = threading.Event()

    def slow_load(config):
        release.wait(10)
        return load_retriever(config)

    with TestClient(create_app(dense_config, load=slow_load)) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        resp = client.post("/retrieve", json={"queries": ["q"]})
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1" and "loading" in resp.text
        release.set()
        assert wait_until_ready(client)["status"] == "ready"
        assert client.post("/retrieve", json={"queries": ["q"]}).status_code == 200


def test_a_failed_load_is_reported_by_health_and_the_hook(tmp_path, dense_config):
    errors = []
    config = ServerConfig(**{**dense_config.__dict__, "corpus_path": str(tmp_path / "missing.jsonl")})
    with TestClient(create_app(config, on_load_error=errors.append)) as client:
        body = wait_until_ready(client)
        assert body["status"] == "failed" and "missing.jsonl does not exist" in body["error"]
        assert client.get("/health").status_code == 503
        assert client.post("/retrieve", json={"queries": ["q"]}).status_code == 503
    assert len(errors) == 1 and isinstance(errors[0], FileNotFoundError)


def test_index_and_corpus_of_different_sizes_are_refused(tmp_path, dense_config):
    corpus = tmp_path / "bigger.jsonl"
    corpus.write_text(Path(dense_config.corpus_path).read_text() + json.dumps(DOCS[0]) + "\n")
    config = ServerConfig(**{**dense_config.__dict__, "corpus_path": str(corpus)})
    with TestClient(create_app(config)) as client:
        assert "the index holds 8 passages but the corpus" in wait_until_ready(client)["error"]


def test_a_failing_search_gives_a_500_with_the_reason_and_the_next_request_works(dense_config):
    calls = []

    def flaky_load(config):
        retriever = load_retriever(config)
        real = retriever.retrieve

        def retrieve(queries, k):
            calls.append(queries)
            if len(calls) == 1:
                raise RuntimeError("index shard went away")
            return real(queries, k)

        retriever.retrieve = retrieve
        return retriever

    with TestClient(create_app(dense_config, load=flaky_load)) as client:
        wait_until_ready(client)
        resp = client.post("/retrieve", json={"queries": ["q"]})
        assert resp.status_code == 500 and "RuntimeError: index shard went away" in resp.text
        assert client.post("/retrieve", json={"queries": ["q"]}).status_code == 200


@contextlib.contextmanager
def serve(app, config: ServerConfig) -> str:
    """The app on a real uvicorn server at a free loopback port, as the command line runs it; yields its base URL."""
    server = uvicorn.Server(uvicorn_config(app, config, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def test_many_concurrent_clients_each_get_their_own_results(dense_config, expected):
    app = create_app(dense_config)
    with serve(app, dense_config) as url:
        async with aiohttp.ClientSession() as session:
            while (await (await session.get(f"{url}/health")).json())["status"] == "loading":
                await asyncio.sleep(0.02)

            async def ask(i: int):
                query, topk = QUERIES[i % len(QUERIES)], 1 + i % 4
                # Shaped exactly as upstream's local_search_server sends it, and read the same way.
                payload = {"queries": [query], "topk": topk, "return_scores": False}
                async with session.post(f"{url}/retrieve", json=payload) as resp:
                    resp.raise_for_status()
                    result = await resp.json()
                return query, topk, [item.get("contents", "") for item in result.get("result", [[]])[0]]

            answers = await asyncio.gather(*(ask(i) for i in range(120)))
    for query, topk, contents in answers:
        want = [DOCS[int(doc_id.removeprefix("doc"))]["contents"] for doc_id in expected[query][0][:topk]]
        assert contents == want
    assert app.state.retrieval.batcher.batches_run < 120  # batched, not one search per request


def test_the_command_line_takes_upstreams_flags_and_binds_loopback_by_default():
    from local_dense_retriever.retrieval_server import build_parser, config_from_args

    args = build_parser().parse_args(["--index_path", "e5_Flat.index", "--corpus_path", "wiki-18.jsonl", "--topk", "5",
                                      "--retriever_name", "bge", "--retriever_model", "BAAI/bge-base-en-v1.5", "--faiss_gpu"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    config = config_from_args(args)
    assert (config.index_path, config.corpus_path, config.topk, config.faiss_gpu) == ("e5_Flat.index", "wiki-18.jsonl", 5, True)
    assert config.encoder_config().family == "bge" and config.encoder_config().resolved_pooling == "cls"


def test_the_command_line_exits_with_an_error_when_loading_fails(dense_config, caplog):
    from local_dense_retriever.retrieval_server import main

    # Files that exist, so the command line takes them; the "index" is the corpus, which FAISS cannot read.
    argv = ["--index_path", dense_config.corpus_path, "--corpus_path", dense_config.corpus_path, "--retriever_name", "e5",
            "--retriever_model", dense_config.retriever_model, "--port", "0", "--log_level", "error"]
    assert main(argv) == 1
    (record,) = [r for r in caplog.records if r.name == "local_dense_retriever.app"]
    # A user's mistake: the reason on one line, no traceback.
    assert record.getMessage() == (f"loading the retriever failed: {dense_config.corpus_path} is not a FAISS index this FAISS "
                                   'can read: Index type 0x6469227b ("{"id") not recognized')
    assert record.exc_info is None


def test_command_line_defaults_are_the_config_defaults(monkeypatch):
    from local_dense_retriever.retrieval_server import build_parser, config_from_args

    monkeypatch.delenv("RETRIEVAL_API_KEY", raising=False)  # the only default taken from the environment
    args = build_parser().parse_args(["--index_path", "i", "--corpus_path", "c"])
    assert config_from_args(args) == ServerConfig(index_path="i", corpus_path="c")
