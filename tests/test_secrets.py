"""Keys stay secret end to end: a token with quotes, backslashes and 300+ characters appears, whole,
escaped or cut, in no error, no log line, no /health answer and none of the args slime uploads to
W&B. (The launch script's side, DRY_RUN and the Ray workers' environment: test_launch_script.py.)"""

from __future__ import annotations

import copy
import json
import logging
from types import SimpleNamespace

import pytest
import yaml
from aiohttp import web
from fastapi.testclient import TestClient

import search_r1_slime.http_client as http_client
from search_r1_slime import preflight
from generate_with_search import ConfigError, resolve_config
from google_search_server import google_search
from local_dense_retriever.app import create_app
from local_dense_retriever.server_config import ServerConfig
from local_search_server import local_search
from search_r1_slime.http_client import RequestFailed, close_shared_session
from tests.fakes.loopback import LoopbackServer
from tests.fakes.retriever import FakeRetriever, doc
from tests.fakes.secret import TOKEN, leaked
from tests.fakes.serper import FakeSerper, organic

# A server that echoes what it was sent, the way FastAPI and many proxies quote a bad header in a
# JSON error, after enough text that a message cut at 200 characters ends inside the token.
PREAMBLE = "the request was refused; here is everything it carried, for debugging: " * 2


def echo(header: str) -> str:
    return json.dumps({"detail": PREAMBLE + header})


class EchoingServer(LoopbackServer):
    """/retrieve and /search: 503 (retried, so logged) then 401, each echoing the credential header,
    JSON-escaped in the first answer and raw in the second."""

    def __init__(self):
        self.answers = 0
        app = web.Application()
        app.router.add_post("/{path:.*}", self._echo)
        super().__init__(app)

    async def _echo(self, request: web.Request) -> web.Response:
        self.answers += 1
        header = request.headers.get("Authorization") or request.headers.get("X-API-KEY") or ""
        if self.answers == 1:
            return web.Response(status=503, text=echo(header), content_type="application/json")
        return web.Response(status=401, text=PREAMBLE + header)


@pytest.fixture(autouse=True)
async def session_cleanup(monkeypatch):
    monkeypatch.delenv("RETRIEVAL_API_KEY", raising=False)
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    yield
    await close_shared_session()


async def failed_search(backend: str, server: EchoingServer) -> RequestFailed:
    if backend == "local":
        call = local_search(server.url("/retrieve"), "q", top_k=1, timeout=5, api_key=TOKEN, attempt_timeout=1)
    else:
        call = google_search(TOKEN, "q", top_k=1, timeout=5, endpoint=server.url("/search"), attempt_timeout=1)
    with pytest.raises(RequestFailed) as info:
        await call
    return info.value


@pytest.mark.parametrize("backend", ["local", "google"])
async def test_a_server_echoing_the_key_gets_it_into_no_error_and_no_log(backend, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    async with EchoingServer() as server:
        error = await failed_search(backend, server)
        assert server.answers == 2
        assert "HTTP 401" in str(error) and "<redacted>" in str(error)
        assert "HTTP 503" in caplog.text and "<redacted>" in caplog.text  # the retry was logged, scrubbed
        assert not leaked(TOKEN, f"{error} {error!r} {caplog.text}")

        # The same with scrubbing switched off leaks: the check above can see a leak.
        caplog.clear()
        server.answers = 0
        monkeypatch.setattr(http_client, "scrub", lambda text, secrets: text)
        error = await failed_search(backend, server)
        assert leaked(TOKEN, f"{error} {caplog.text}")


FILM = "The studio's sixth film, released in 2024 by Example Pictures, opened in March."


@pytest.mark.parametrize(
    "key",
    [
        "released in 2024 by",  # a key that is also words of a passage
        '{"result": [[{"document"',  # a key that is also the JSON of every answer
    ],
)
async def test_a_key_that_is_also_in_the_answer_leaves_the_answer_whole(key):
    # Keys are scrubbed from what messages show, never from the data: the model reads the passage as written.
    async with FakeRetriever({"q": [doc("1", "Film", FILM)]}, api_key=key) as retriever:
        assert await local_search(retriever.search_url, "q", top_k=1, timeout=5, api_key=key) == [
            {"document": {"contents": f'"Film"\n{FILM}'}}]
    async with FakeSerper({"q": [organic("Film", "http://127.0.0.1:9/", FILM)]}, api_key=key) as serper:
        assert await google_search(key, "q", top_k=1, timeout=5, endpoint=serper.endpoint) == [
            {"document": {"contents": f'"Film"\n{FILM}'}}]


def test_a_key_too_short_to_be_a_secret_is_refused_wherever_it_comes_from(tmp_path, monkeypatch):
    short, shortest = "x" * 15, "y" * 16
    too_short = "shorter than 16 characters, too short to be a secret"
    for section in ("local", "google"):
        with pytest.raises(ConfigError) as info:
            resolve_config(SimpleNamespace(search_r1={section: {"api_key": short}}))
        assert str(info.value) == f"search_r1.{section}.api_key is {too_short} (value not shown)"
        assert resolve_config(SimpleNamespace(search_r1={section: {"api_key": shortest}}))[section]["api_key"] == shortest
    key_file = tmp_path / "short.key"
    key_file.write_text(short + "\n")
    with pytest.raises(ConfigError) as info:
        resolve_config(SimpleNamespace(search_r1={"local": {"api_key_file": str(key_file)}}))
    assert str(info.value) == (f"search_r1.local.api_key_file cannot be read as a key file (the key in it is {too_short}; "
                               "the path is not shown, in case it is a key)")
    monkeypatch.setenv("RETRIEVAL_API_KEY", short)
    with pytest.raises(ConfigError) as info:  # checked with the settings, before the first search
        resolve_config(SimpleNamespace(search_r1={}))
    assert str(info.value) == f"RETRIEVAL_API_KEY holds a key {too_short} (value not shown)"
    monkeypatch.setenv("SERPER_API_KEY", short)
    problems = preflight.search_problems({"search_backend": "google"})
    assert problems == [f"SERPER_API_KEY holds a key {too_short} (value not shown)"]
    assert short not in str(problems)
    monkeypatch.setenv("SERPER_API_KEY", shortest)
    assert preflight.search_problems({"search_backend": "google"}) == []


async def test_a_blank_key_in_the_environment_is_no_key_and_garbles_no_message(monkeypatch):
    monkeypatch.setenv("RETRIEVAL_API_KEY", " ")
    async with EchoingServer() as server:
        with pytest.raises(RequestFailed) as info:
            await local_search(server.url("/retrieve"), "q", top_k=1, timeout=5, attempt_timeout=1)
    assert "HTTP 401" in str(info.value) and PREAMBLE in str(info.value) and "<redacted>" not in str(info.value)
    assert http_client.scrub("released in 2024, see above", [" ", "\t\n", ""]) == "released in 2024, see above"


async def test_a_key_file_keeps_the_key_out_of_the_args_slime_uploads(tmp_path):
    # slime sets every top-level key of the --custom-config-path YAML on args
    # (slime/utils/arguments.py) and, with --use-wandb, uploads a deep copy of args.__dict__ as the
    # run's W&B config (slime/observability/wandb_utils.py, _compute_config_for_logging).
    key_file = tmp_path / "retrieval.key"
    key_file.write_text(TOKEN + "\n")
    async with FakeRetriever({"q": [doc("1", "T", "t")]}, api_key=TOKEN) as retriever:
        config_yaml = tmp_path / "run.yaml"
        config_yaml.write_text(yaml.safe_dump({"search_r1": {"local": {"search_url": retriever.search_url, "api_key_file": str(key_file)}}}))
        args = SimpleNamespace(use_wandb=True)
        for key, value in yaml.safe_load(config_yaml.read_text()).items():
            setattr(args, key, value)
        uploaded = json.dumps(copy.deepcopy(args.__dict__), default=str)
        assert not leaked(TOKEN, uploaded)

        config = resolve_config(args)  # W&B on and no key in args: accepted
        assert await local_search(query="q", top_k=1, timeout=5, **config["local"]) == [{"document": {"contents": '"T"\nt'}}]
        assert retriever.refused == []  # the token from the file was the right one


@pytest.mark.parametrize("section", ["local", "google", "judge"])
def test_a_key_written_in_the_args_is_refused_while_wandb_is_on_and_never_quoted(section):
    args = SimpleNamespace(use_wandb=True, search_r1={section: {"api_key": TOKEN}})
    with pytest.raises(ConfigError) as info:
        resolve_config(args)
    assert str(info.value).startswith(f"search_r1.{section}.api_key is written in the --custom-config-path YAML while W&B is on")
    assert f"search_r1.{section}.api_key_file" in str(info.value)
    assert not leaked(TOKEN, str(info.value))
    assert resolve_config(SimpleNamespace(use_wandb=False, search_r1=args.search_r1))[section]["api_key"] == TOKEN


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"api_key": 123456789012345}, "search_r1.local.api_key must be None or a non-empty string (got int, value not shown)"),
        ({"api_key": TOKEN, "api_key_file": __file__}, "search_r1.local must set api_key or api_key_file, not both"),
        ({"api_key_file": 123456789012345}, "search_r1.local.api_key_file must be None or the path of a file holding the key (got int, value not shown)"),
        # The key itself put where its file's path belongs.
        ({"api_key_file": "sk-live-0123456789abcdef"}, "search_r1.local.api_key_file cannot be read as a key file (No such file or directory; the path is not shown, in case it is a key)"),
    ],
)
def test_key_settings_are_checked_without_quoting_a_key(settings, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(SimpleNamespace(search_r1={"local": settings}))
    assert str(info.value) == message
    assert not any(str(value) in str(info.value) for value in settings.values())


def test_an_empty_key_file_is_refused(tmp_path):
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"search_r1\.google\.api_key_file cannot be read as a key file \(the file is empty;"):
        resolve_config(SimpleNamespace(search_r1={"google": {"api_key_file": str(empty)}}))


def test_the_retrieval_server_shows_its_token_nowhere(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    def load(config):
        raise RuntimeError("no index here")

    config = ServerConfig(index_path=str(tmp_path / "x.index"), corpus_path=str(tmp_path / "c.jsonl"), api_key=TOKEN)
    with TestClient(create_app(config, load=load)) as client:
        health = client.get("/health")
        refused = client.post("/retrieve", json={"queries": ["q"]}, headers={"Authorization": "Bearer wrong"})
    assert health.json()["config"]["api_key"] == "<redacted>"
    assert refused.status_code == 401
    assert not leaked(TOKEN, health.text + refused.text + caplog.text)
