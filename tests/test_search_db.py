"""The search database (search_r1_slime.search_db): a recorded evaluation replayed without its
retriever, fingerprints that refuse another index, many processes writing at once, a budget that
holds exactly across processes, the paid cache's expiry, and a bad file as one line."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import shutil
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from fastapi.testclient import TestClient

from generate_with_search import BUDGET_SPENT_TEXT, INFORMATION_HEAD, INFORMATION_TAIL, generate, resolve_config
from google_search_server import fingerprint as google_fingerprint
from local_dense_retriever.app import create_app
from local_dense_retriever.corpus import CorpusStore
from local_dense_retriever.encoder import Encoder
from local_dense_retriever.fingerprint import server_fingerprint
from local_dense_retriever.index_builder import build_dense_index
from local_dense_retriever.retriever import load_retriever
from local_dense_retriever.server_config import ServerConfig
from search_r1_slime import evaluate, search_db
from search_r1_slime.http_client import close_shared_session
from search_r1_slime.rollout_metrics import rollout_metrics
from search_r1_slime.search_db import PaidLedger, ReplayError, SearchDb, SearchDbError
from search_r1_slime.settings import ConfigError
from tests.fakes.encoders import make_tiny_bert
from tests.fakes.retriever import FakeRetriever
from tests.fakes.sample import NewSample
from tests.fakes.serper import FakeSerper, organic
from tests.fakes.sglang import FakeSGLang, FakeSGLangPerPrompt, Turn
from tests.search_db_workers import RECORDS_PER_PROCESS, claim_many, record_many
from tests.test_evaluate import CASES, CORPUS, chat_prompt, run_evaluate, write_test_parquet
from tests.test_retrieval_server import DOCS, QUERIES, wait_until_ready, write_corpus

KEY = "sk-test-0123456789abcdef"
SCORES = ("index", "data_source", "em", "f1", "cover_em", "response", "answer")


def db_config(path: Path, **search_db_settings) -> dict:
    return resolve_config(SimpleNamespace(search_r1={"search_db": {"path": str(path), **search_db_settings}}))


# ---------------------------------------------------------------------------- record and replay


async def test_a_recorded_evaluation_replays_its_scores_with_the_retriever_stopped(tokenizer, tokenizer_dir, tmp_path):
    cases = [c for c in CASES if c[0] != "triviaqa"]  # every trajectory generated (the SGLang failure left out)
    data, db = tmp_path / "test.parquet", tmp_path / "searches.sqlite"
    write_test_parquet(data, cases)
    config = tmp_path / "search.yaml"

    def scripts():  # each run consumes its scripts
        return {chat_prompt(tokenizer, question): list(turns) for _, question, _, turns, _ in cases}

    async with FakeSGLangPerPrompt(tokenizer, scripts()) as sglang, FakeRetriever(CORPUS, fingerprint="sha256:index-a") as retriever:
        config.write_text(f"search_r1:\n  local:\n    search_url: {retriever.search_url}\n  search_db:\n    path: {db}\n")
        code, _, stderr = await run_evaluate(
            "--data", str(data), "--hf-checkpoint", tokenizer_dir, "--sglang-url", sglang.url(), "--config", str(config),
            "--output", str(tmp_path / "recorded.jsonl"), "--skip-preflight", "--no-progress",
        )
        assert code == 0, stderr.decode()
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT backend, query, top_k, fingerprint, results FROM searches ORDER BY query").fetchall()
    assert [row[:4] for row in rows] == [("local", q, 3, "sha256:index-a") for q in sorted(CORPUS)]
    assert [json.loads(row[4]) for row in rows] == [[{"document": {"contents": d["contents"]}} for d in CORPUS[q]] for q in sorted(CORPUS)]

    # The retriever is gone: its URL in the config now refuses connections.
    async with FakeSGLangPerPrompt(tokenizer, scripts()) as sglang:
        code, stdout, stderr = await run_evaluate(
            "--data", str(data), "--hf-checkpoint", tokenizer_dir, "--sglang-url", sglang.url(), "--config", str(config),
            "--output", str(tmp_path / "replayed.jsonl"), "--replay", str(db), "--no-progress",
        )
        assert code == 0, stderr.decode()
        assert all(fake.script_done for fake in sglang.fakes.values())

    def scores(name: str) -> list[tuple]:
        records = sorted(map(json.loads, (tmp_path / name).read_text().splitlines()), key=lambda r: r["index"])
        return [tuple(r[key] for key in SCORES) for r in records]

    assert scores("replayed.jsonl") == scores("recorded.jsonl")
    assert [row[2:5] for row in scores("replayed.jsonl")] == [c[4] for c in cases]
    assert "Doc 1(Title: \"Hamlet\")" in scores("replayed.jsonl")[0][5]  # the recorded passages, not a failure

    # A question the record never searched for: strict replay stops with one line naming it.
    unseen = [("nq", "who painted the mona lisa", ["Leonardo da Vinci"], [Turn("<think> x </think>\n<search> mona lisa painter </search>")], None)]
    write_test_parquet(data, unseen)
    async with FakeSGLangPerPrompt(tokenizer, {chat_prompt(tokenizer, unseen[0][1]): list(unseen[0][3])}) as sglang:
        code, _, stderr = await run_evaluate(
            "--data", str(data), "--hf-checkpoint", tokenizer_dir, "--sglang-url", sglang.url(), "--replay", str(db),
            "--output", str(tmp_path / "unseen.jsonl"), "--no-progress",
        )
    assert code == 1
    assert stderr.decode().splitlines()[-1] == (
        f"ERROR: search not in the record {db}: backend local, top_k 3, query 'mona lisa painter'"
    )


@pytest.fixture(scope="module")
def two_indexes(tmp_path_factory) -> tuple[ServerConfig, Path]:
    """A dense server config over a flat index, and a second flat index of the same corpus built
    with another encoder of the same size (its file differs, everything else is alike)."""
    d = tmp_path_factory.mktemp("fingerprint")
    texts = [c["contents"] for c in DOCS] + QUERIES + ["query:", "passage:"]
    config = ServerConfig(index_path=str(d / "a.index"), corpus_path=str(write_corpus(d / "corpus.jsonl")), topk=2,
                          retriever_name="e5", retriever_model=str(make_tiny_bert(d / "model", texts)))
    build_dense_index(CorpusStore(config.corpus_path), Encoder(config.encoder_config()), config.index_path, show_progress=False)
    other = make_tiny_bert(d / "other_model", texts, seed=1)
    build_dense_index(CorpusStore(config.corpus_path), Encoder(replace(config, retriever_model=str(other)).encoder_config()),
                      d / "b.index", show_progress=False)
    return config, d


def fingerprint(config: ServerConfig) -> str:
    return server_fingerprint(config, load_retriever(config))["id"]


def test_another_index_topk_or_encoder_changes_the_fingerprint_and_strict_replay_refuses_it(two_indexes, tmp_path):
    config, d = two_indexes
    original = fingerprint(config)
    # The same files elsewhere (new paths, new modification times) are the same retrieval.
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    moved = replace(config, index_path=str(copy / "a.index"), corpus_path=str(copy / "corpus.jsonl"), retriever_model=str(copy / "model"))
    assert fingerprint(moved) == original

    changed = {
        "another index file": replace(config, index_path=str(d / "b.index")),
        "another top-k": replace(config, topk=3),
        "another encoder": replace(config, retriever_model=str(d / "other_model")),
        "another max length": replace(config, max_length=128),
    }
    fingerprints = {name: fingerprint(c) for name, c in changed.items()}
    assert len({original, *fingerprints.values()}) == 1 + len(changed), fingerprints

    db = tmp_path / "searches.sqlite"
    record = SearchDb(db)
    record.record([("default", "local", "capital of france", 3, original, [{"document": {"contents": '"Paris"\nx'}}], 0.01)])

    async def replay(expected: str) -> list[dict]:
        config_ = db_config(db, replay="strict", expect_fingerprint=expected)
        return await search_db.search("capital of france", config_, ask_backend=None)

    assert asyncio.run(replay(original)) == [{"document": {"contents": '"Paris"\nx'}}]
    with pytest.raises(ReplayError) as refused:
        asyncio.run(replay(fingerprints["another index file"]))
    assert str(refused.value) == (
        f"search 'capital of france' (backend local, top_k 3) was recorded in {db} against fingerprint {original}, not "
        f"{fingerprints['another index file']}: another index, corpus, encoder or setting answered it"
    )


def test_the_server_reports_its_fingerprint_in_health_and_on_every_answer(two_indexes):
    config = two_indexes[0]
    with TestClient(create_app(config)) as client:
        health = wait_until_ready(client)
        answer = client.post("/retrieve", json={"queries": [QUERIES[0]], "topk": 1}).json()
    assert health["fingerprint"]["id"] == answer["fingerprint"] == fingerprint(config)
    parts = health["fingerprint"]["parts"]
    assert parts["faiss"] == {"type": "IndexFlatIP", "ntotal": len(DOCS), "d": 32, "device": "cpu", "search_params": None}
    assert (parts["topk"], parts["encoder"]["query_prefix"], parts["encoder"]["precision"]) == (2, "query: ", "fp32")
    assert parts["corpus"]["bytes"] == Path(config.corpus_path).stat().st_size


def test_the_google_fingerprint_names_provider_and_settings_never_the_key():
    google = resolve_config(SimpleNamespace(search_r1={"google": {"api_key": KEY}}))["google"]
    assert google_fingerprint(google) == google_fingerprint({**google, "api_key": "another key", "attempt_timeout": 3.0})
    assert google_fingerprint(google) != google_fingerprint({**google, "snippet_only": False})
    assert google_fingerprint(google) != google_fingerprint({**google, "endpoint": "https://other.example/search"})
    # The page tool's searches carry each result's address: another answer, another fingerprint.
    assert google_fingerprint(google) != google_fingerprint(google, with_links=True)


# ---------------------------------------------------------------------------- many processes

def _run_at_once(target, args_of) -> None:
    """``target`` in 8 processes, released together once all are up (a process takes a second or
    two to start, far longer than its work: started one by one, they would hardly overlap)."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(8)
    processes = [context.Process(target=target, args=(*args_of(i), start)) for i in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0] * 8


def test_eight_processes_recording_at_once_lose_no_row_and_corrupt_nothing(tmp_path):
    db = tmp_path / "searches.sqlite"
    _run_at_once(record_many, lambda i: (str(db), i))
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = connection.execute("SELECT query, results, pid FROM searches").fetchall()
    assert sorted(query for query, _, _ in rows) == sorted(f"w{w} q{i}" for w in range(8) for i in range(RECORDS_PER_PROCESS))
    assert all(json.loads(results)[0]["document"]["contents"] == f'"{query.split()[0]}"\n0' for query, results, _ in rows)
    assert len({pid for _, _, pid in rows}) == 8


def _writer_mid_transaction(path: Path) -> sqlite3.Connection:
    """Another process's connection to a file not yet in WAL mode, holding its write lock."""
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other (x)")
    writer.execute("BEGIN")
    writer.execute("INSERT INTO other VALUES (1)")
    return writer


def test_opening_waits_for_a_writer_that_holds_the_file_instead_of_failing_at_once(tmp_path):
    # Turning the file to WAL needs its exclusive lock; while a writer holds it, SQLite answers
    # "locked" at once, without waiting busy_timeout (CI saw it with eight processes opening together).
    path = tmp_path / "searches.sqlite"
    writer = _writer_mid_transaction(path)
    committed = threading.Timer(0.5, writer.execute, ("COMMIT",))
    committed.start()
    db = SearchDb(path, busy_timeout=30)
    assert db.claim("run-a", 10) == (True, 1)
    assert not writer.in_transaction  # it did wait for the writer
    committed.join()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT x FROM other").fetchall() == [(1,)]


def test_a_writer_holding_the_file_past_busy_timeout_is_one_line(tmp_path):
    path = tmp_path / "searches.sqlite"
    writer = _writer_mid_transaction(path)
    with pytest.raises(SearchDbError) as raised:
        SearchDb(path, busy_timeout=0.2).check()
    assert str(raised.value) == f"search database {path}: database is locked"
    assert writer.in_transaction  # gave up while the writer still held it
    writer.execute("COMMIT")


def test_the_budget_holds_exactly_across_processes_under_concurrent_load(tmp_path):
    db = tmp_path / "searches.sqlite"
    taken = multiprocessing.get_context("spawn").Value("i", 0)
    limit = 300  # 8 processes x 60 attempts compete for 300 requests
    _run_at_once(claim_many, lambda i: (str(db), 60, limit, taken))
    assert taken.value == limit
    assert SearchDb(db).paid_count("run-a") == limit
    assert SearchDb(db).claim("run-a", limit) == (False, limit)  # the N+1th is refused
    assert SearchDb(db).claim("run-a", limit + 1) == (True, limit + 1)  # a raised cap allows one more
    assert SearchDb(db).claim("run-b", limit) == (True, 1)  # another run has its own counter


# ---------------------------------------------------------------------------- paid search

SEARCH_Q1 = "<think> Look it up. </think>\n<search> first query </search>"
SEARCH_Q2 = "<think> And this. </think>\n<search> second query </search>"
ANSWER = "<think> Done. </think>\n<answer> x </answer>"


async def test_a_spent_budget_tells_the_model_and_the_metrics_count_it(tokenizer, tokenizer_dir, tmp_path, caplog):
    results = {q: [organic(f"T {q}", "http://example.invalid/", f"{q} snippet with more than five words in it")]
               for q in ("first query", "second query")}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "q?"}], tokenize=False, add_generation_prompt=True)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    db = tmp_path / "searches.sqlite"

    async def one_trajectory(serper) -> NewSample:
        async with FakeSGLang(tokenizer, prompt_ids, [Turn(SEARCH_Q1), Turn(SEARCH_Q2), Turn(ANSWER)]) as sglang:
            args = SimpleNamespace(
                sglang_router_ip="127.0.0.1", sglang_router_port=sglang.port, hf_checkpoint=tokenizer_dir, partial_rollout=False,
                search_r1={"search_backend": "google", "google": {"api_key": KEY, "endpoint": serper.endpoint, "cache": False},
                           "search_db": {"path": str(db), "max_paid_requests": 1, "price_per_request": 0.25}},
            )
            sample = NewSample(prompt=prompt, label={"ground_truth": {"target": ["x"]}})
            return await generate(args, sample, {"max_new_tokens": 300, "temperature": 1.0})

    async with FakeSerper(results, api_key=KEY) as serper:
        with caplog.at_level(logging.WARNING, logger="search_r1_slime.search_db"):
            first = await one_trajectory(serper)
            # A later run (or worker) asks the same first query: the shared cache answers, unpaid.
            second = await one_trajectory(serper)
        await close_shared_session()
    assert [body["q"] for _, body in serper.requests] == ["first query"]  # one paid request in all
    spent = INFORMATION_HEAD + BUDGET_SPENT_TEXT + INFORMATION_TAIL
    for sample in (first, second):
        assert "Doc 1(Title: \"T first query\")" in sample.response and spent in sample.response
        assert sample.metadata["search_r1"]["search_failures"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "the paid search budget of run 'default' is spent (1 of search_r1.search_db.max_paid_requests=1 requests made); "
        "not sent; searches now tell the model so"
    ]
    metrics = rollout_metrics([first, second])
    # Two rollouts' worth in one window: 1 paid, 1 answered from the shared cache, 2 refused.
    assert (metrics["search_r1/paid_requests"], metrics["search_r1/paid_cost"], metrics["search_r1/budget_refusals"]) == (1, 0.25, 2)
    assert metrics["search_r1/paid_cache_hit_ratio"] == 1 / 2


async def test_a_paid_answer_is_reused_until_it_expires(tmp_path):
    now = [1000.0]
    db = SearchDb(tmp_path / "searches.sqlite", clock=lambda: now[0])
    settings = {"paid_cache_ttl": 60.0, "run": "r", "max_paid_requests": None, "price_per_request": 0.0}
    ledger = PaidLedger(db, settings, "sha256:google")
    sent = []

    async def send() -> list[dict]:
        sent.append(now[0])
        return [{"document": {"contents": f'"t"\nanswer of {now[0]}'}}]

    first = await ledger.pay("q", 3, send)
    now[0] += 59.999
    assert await ledger.pay("q", 3, send) == first  # not yet 60 s old
    assert await ledger.pay("q", 4, send) != first  # another top_k is another request
    now[0] = 1060.0
    assert await ledger.pay("q", 3, send) == [{"document": {"contents": '"t"\nanswer of 1060.0'}}]  # 60 s old: paid again
    assert sent == [1000.0, 1059.999, 1060.0]
    assert (db.stats.paid, db.stats.paid_cache_hits, db.stats.run_paid) == (3, 1, 3)


# ---------------------------------------------------------------------------- bad files and settings


def test_a_corrupt_or_missing_database_is_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database, only some bytes " * 100)
    with pytest.raises(SearchDbError) as error:
        SearchDb(corrupt).check()
    assert str(error.value) == (
        f"search database {corrupt}: file is not a database (not a SQLite database, or a damaged one: move it away "
        "or set another search_r1.search_db.path)"
    )
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(SearchDbError, match=r"^search database .*missing.sqlite does not exist: replay reads the file a recorded run wrote$"):
        search_db.database(db_config(missing, replay="strict")["search_db"])
    with pytest.raises(SearchDbError, match=r"^search database .*/nowhere/x.sqlite: its folder .*/nowhere does not exist$"):
        SearchDb(tmp_path / "nowhere" / "x.sqlite")
    with pytest.raises(ConfigError, match=r"^search_r1.search_db.path must name the SQLite file that replay and max_paid_requests use"):
        resolve_config(SimpleNamespace(search_r1={"search_db": {"replay": "strict"}}))


def test_a_database_of_another_schema_version_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "searches.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version=7")
    with pytest.raises(SearchDbError) as raised:
        SearchDb(path).check()
    assert str(raised.value) == f"search database {path} has schema version 7, this plugin reads 1"
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (7,)
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []  # no table created


@pytest.mark.parametrize("make", ["corrupt", "missing"])
def test_evaluate_refuses_a_bad_replay_file_before_anything_starts(tmp_path, tokenizer_dir, capsys, make):
    db = tmp_path / "searches.sqlite"
    if make == "corrupt":
        db.write_bytes(b"\x00garbage" * 512)
    data = tmp_path / "test.parquet"
    write_test_parquet(data)
    code = evaluate.main(["--data", str(data), "--hf-checkpoint", tokenizer_dir, "--replay", str(db), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith(f"ERROR: search database {db}")
    assert not (tmp_path / "o.jsonl").exists()
