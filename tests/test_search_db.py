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
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from generate_with_search import BUDGET_SPENT_TEXT, INFORMATION_HEAD, INFORMATION_TAIL, generate, resolve_config
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
from tests.test_evaluate import CASES, CORPUS, chat_prompt, run_evaluate, write_test_parquet
from tests.test_retrieval_server import DOCS, QUERIES, write_corpus

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


# ---------------------------------------------------------------------------- many processes

RECORDS_PER_PROCESS = 150


def _record_many(path: str, worker: int, start) -> None:
    """One rollout worker: every search recorded through search_db.search, all on one event loop."""
    config = db_config(Path(path))

    async def main() -> None:
        async def answer(ledger) -> list[dict]:
            return [{"document": {"contents": f'"w{worker}"\n{i}'}} for i in range(3)]

        start.wait()
        await asyncio.gather(*(search_db.search(f"w{worker} q{i}", config, answer) for i in range(RECORDS_PER_PROCESS)))

    asyncio.run(main())


def _claim_many(path: str, attempts: int, limit: int, taken, start) -> None:
    db = SearchDb(path)
    start.wait()
    for _ in range(attempts):
        if db.claim("run-a", limit)[0]:
            with taken.get_lock():
                taken.value += 1


def _run_at_once(target, args_of) -> None:
    """``target`` in 8 processes, released together once all are up."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    processes = [context.Process(target=target, args=(*args_of(i), start)) for i in range(8)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0] * 8


def test_eight_processes_recording_at_once_lose_no_row_and_corrupt_nothing(tmp_path):
    db = tmp_path / "searches.sqlite"
    _run_at_once(_record_many, lambda i: (str(db), i))
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = connection.execute("SELECT query, results, pid FROM searches").fetchall()
    assert sorted(query for query, _, _ in rows) == sorted(f"w{w} q{i}" for w in range(8) for i in range(RECORDS_PER_PROCESS))
    assert all(json.loads(results)[0]["document"]["contents"] == f'"{query.split()[0]}"\n0' for query, results, _ in rows)
    assert len({pid for _, _, pid in rows}) == 8


def test_the_budget_holds_exactly_across_processes_under_concurrent_load(tmp_path):
    db = tmp_path / "searches.sqlite"
    taken = multiprocessing.get_context("spawn").Value("i", 0)
    limit = 37  # 8 processes x 10 attempts compete for 37 requests
    _run_at_once(_claim_many, lambda i: (str(db), 10, limit, taken))
    assert taken.value == limit
    assert SearchDb(db).paid_count("run-a") == limit
    assert SearchDb(db).claim("run-a", limit) == (False, limit)  # the N+1th is refused
    assert SearchDb(db).claim("run-a", limit + 1) == (True, limit + 1)  # a raised cap allows one more
    assert SearchDb(db).claim("run-b", limit) == (True, 1)  # another run has its own counter
