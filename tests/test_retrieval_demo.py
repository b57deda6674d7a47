"""The CPU demo: the shipped corpus indexed with the packaged MiniLM, served, answering questions.

These are the semantic checks: a question about a passage's fact must bring that passage first;
and the demo's own run: a real server asked through local_search_server.local_search.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from local_dense_retriever.app import create_app
from local_dense_retriever.retrieval_server import listen
from local_dense_retriever.retriever import load_retriever
from search_r1_slime import demo


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return demo.prepare(tmp_path_factory.mktemp("demo_data"), show_progress=False)


@pytest.fixture(scope="module")
def client(config):
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json()["status"] == "ready"
        yield client


def test_demo_corpus_is_wiki18_format_with_unique_ids():
    rows = [json.loads(line) for line in demo.DEMO_CORPUS.read_text(encoding="utf-8").splitlines()]
    assert 250 <= len(rows) and demo.DEMO_CORPUS.stat().st_size < 300_000
    assert [r["id"] for r in rows] == [str(i) for i in range(len(rows))]
    for r in rows:
        title, newline, text = r["contents"].partition("\n")
        assert set(r) == {"id", "contents"} and newline and title.startswith('"') and title.endswith('"') and text


def test_the_index_is_built_once_and_reused(config, tmp_path):
    index_mtime = os.stat(config.index_path).st_mtime_ns
    again = demo.prepare(os.path.dirname(config.index_path), show_progress=False)
    assert again == config and os.stat(config.index_path).st_mtime_ns == index_mtime


def test_serving_the_shipped_corpus_writes_nothing_inside_the_package(config, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    package = demo.DEMO_CORPUS.parent.parent
    before = {str(p): p.stat().st_mtime_ns for p in package.rglob("*") if "__pycache__" not in p.parts}
    # As `retrieval_server --corpus_path <the shipped demo_corpus.jsonl>` loads it: no Arrow path given.
    retriever = load_retriever(replace(config, corpus_arrow_path=None))
    assert len(retriever) == len(demo.DEMO_CORPUS.read_text(encoding="utf-8").splitlines())
    assert {str(p): p.stat().st_mtime_ns for p in package.rglob("*") if "__pycache__" not in p.parts} == before
    assert list((tmp_path / "search-r1-slime" / "corpora").glob("demo_corpus-*.arrow"))


@pytest.mark.parametrize(
    "question, title",
    [
        (demo.DEFAULT_QUERY, "Sydney Opera House"),
        ("Who was the first person to walk on the Moon?", "Neil Armstrong"),
        ("Which element has the chemical symbol Au?", "Gold"),
        ("Who wrote Pride and Prejudice?", "Pride and Prejudice"),
        ("When did the Titanic sink?", "Titanic"),
        ("What is the tallest building in the world?", "Burj Khalifa"),
        ("Who discovered penicillin?", "Penicillin"),
    ],
)
def test_a_question_about_a_fact_brings_its_passage_first(client, question, title):
    (docs,) = client.post("/retrieve", json={"queries": [question], "topk": 3}).json()["result"]
    assert docs[0]["contents"].startswith(f'"{title}"\n')


async def test_the_demo_answers_through_the_rollouts_client(config, capsys):
    sock = listen("127.0.0.1", 0)
    assert await demo.run(config, sock, host="127.0.0.1", query="Who painted The Starry Night?", topk=2, serve=False) == 0
    out = capsys.readouterr().out
    # The passages exactly as the model reads them: Search-R1 keeps the corpus's quoted title.
    assert out.startswith('Q: Who painted The Starry Night?\nDoc 1(Title: "Vincent van Gogh") Vincent van Gogh (1853–1890)')
    assert '\nDoc 2(Title: "' in out and "Doc 3" not in out


def test_a_busy_port_is_refused_in_one_line_before_the_index_is_built(tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the index was built before the port was checked")

    monkeypatch.setattr(demo, "prepare", forbidden)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as stop:
            demo.main(["--port", str(port), "--data_dir", str(tmp_path / "demo")])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(f": error: cannot listen on 127.0.0.1:{port} (Address already in use); is another server "
                         "running there? pass another --port")


@pytest.mark.parametrize("argv, message", [
    (["--query", ""], "argument --query: ask a question, got '' (see --help)"),
    (["--query", "  \t"], "argument --query: ask a question, got '  \\t' (see --help)"),
    (["--topk", "three"], "argument --topk: expected a whole number from 1 to 100, got 'three' (see --help)"),
    (["--port", "http"], "argument --port: a port is a whole number from 0 to 65535, got 'http' (see --help)"),
    (["--data_dir", "{tmp}/notes.txt"], "--data_dir {tmp}/notes.txt is a file, not a folder"),
    (["--data_dir", "{tmp}/notes.txt/demo"], "--data_dir {tmp}/notes.txt/demo: {tmp}/notes.txt is a file, not a folder"),
    (["--data_dir", "/proc/demo_data"], "--data_dir /proc/demo_data: cannot create it, /proc is not writable"),  # for root too
])
def test_a_wrong_input_is_one_line_before_the_server_starts(tmp_path, capsys, monkeypatch, argv, message):
    def forbidden(*args, **kwargs):
        raise AssertionError("the demo started")

    monkeypatch.setattr(demo, "listen", forbidden)
    monkeypatch.setattr(demo, "prepare", forbidden)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SystemExit) as stop:
        demo.main([*[a.format(tmp=tmp_path) for a in argv], "--port", "0"] if "--port" not in argv else argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"search-r1-demo: error: {message.format(tmp=tmp_path)}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
