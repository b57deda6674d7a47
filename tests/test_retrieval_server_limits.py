"""What the retrieval server refuses, and says it refuses: request heads too large, with too many
headers (431) or too slow (408), too many connections (503), bodies too large (413) or too slow
(408), a missing or wrong access token (401), and the OpenAPI document that announces all of it.

Requests are sent over raw sockets to a real uvicorn server run as the command line runs it, so
what is tested is what a client on the network sees: the 413 for a body claiming 512 MB arrives
while the client has sent a few bytes.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import logging
import re
import select
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from local_dense_retriever import http_limits
from local_dense_retriever.api import NEAR_MISS_PATTERN
from local_dense_retriever.app import create_app
from local_dense_retriever.retrieval_server import build_parser, config_from_args
from local_dense_retriever import server_config
from local_dense_retriever.server_config import ServerConfig
from search_r1_slime import settings as plugin_settings
from tests.test_retrieval_server import QUERIES, dense_config, expected, ids, serve, wait_until_ready  # noqa: F401 (fixtures)

TOKEN = "t0ken-for-the-tests"
BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 1.0


def head(content_length: int | None = None, **headers: str) -> bytes:
    """A /retrieve request's head; without content_length the body is sent chunked."""
    lines = ["POST /retrieve HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines.append(f"Content-Length: {content_length}" if content_length is not None else "Transfer-Encoding: chunked")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def exchange(url: str, request_head: bytes, body: Iterable[bytes]) -> tuple[int, dict[str, str], bytes, int]:
    """Send the head, then body pieces until the server answers: (status, headers, body, body bytes sent)."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(request_head)
        sent = 0
        for piece in body:
            if select.select([sock], [], [], 0.05)[0]:  # answered: stop sending
                break
            try:
                sock.sendall(piece)
            except OSError:  # the server closed the connection after answering
                break
            sent += len(piece)
        return (*read_response(sock), sent)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def post(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request("POST", "/retrieve", json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@contextlib.contextmanager
def ready_server(config: ServerConfig) -> Iterator[str]:
    """The app on a real uvicorn server, loaded; yields its base URL."""
    with serve(create_app(config), config) as url:
        address = urlsplit(url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
            try:
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            finally:
                connection.close()
            time.sleep(0.02)
        yield url


@pytest.fixture(scope="module")
def limited(dense_config) -> ServerConfig:
    # The body limit is derived: 8 queries of at most 100 characters.
    return replace(dense_config, body_timeout_s=BODY_TIMEOUT_S, header_timeout_s=HEADER_TIMEOUT_S)


@pytest.fixture(scope="module")
def server(limited) -> Iterator[str]:
    with ready_server(limited) as url:
        yield url


@pytest.fixture(scope="module")
def guarded(dense_config) -> Iterator[TestClient]:
    with TestClient(create_app(replace(dense_config, api_key=TOKEN))) as client:
        assert wait_until_ready(client)["status"] == "ready"
        yield client


def test_a_body_claiming_512_mb_is_refused_at_once_unread(server, limited, expected):
    status, headers, body, sent = exchange(server, head(512 * 2**20), itertools.repeat(b'{"queries": ["', 3))
    assert status == 413 and sent <= 3 * 14  # answered from the head: the 512 MB were never sent
    assert json.loads(body) == {"detail": f"the request body is {512 * 2**20} bytes; this server takes at most "
                                          f"{limited.body_limit} (--max_body_bytes): send fewer or shorter queries per request"}
    assert headers["connection"] == "close"
    status, answer = post(server, {"queries": [QUERIES[0]]})
    assert status == 200 and ids(answer["result"][0]) == expected[QUERIES[0]][0][:2]


def test_a_client_that_asks_before_sending_gets_413_instead_of_100_continue(server):
    # curl sends "Expect: 100-continue" before large bodies and waits: it must not be invited to send.
    address = urlsplit(server)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head(512 * 2**20, Expect="100-continue"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")


def test_a_chunked_body_is_refused_once_it_passes_the_limit(server, limited):
    piece = b" " * 4096  # JSON whitespace: only the size can refuse it
    status, headers, body, sent = exchange(server, head(), itertools.repeat(chunk(piece), 1000))
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["detail"].startswith(f"the request body passed {limited.body_limit} bytes")
    assert limited.body_limit < sent < limited.body_limit + 20 * len(chunk(piece))  # not the 4 MB offered


def test_a_slow_body_gets_408_and_others_are_served_meanwhile(server, expected):
    address = urlsplit(server)
    with socket.create_connection((address.hostname, address.port), timeout=10) as slow:
        slow.sendall(head(100) + b'{"queries": [')  # ...and nothing more
        started = time.monotonic()
        for query in QUERIES:
            status, answer = post(server, {"queries": [query], "topk": 3})
            assert status == 200 and ids(answer["result"][0]) == expected[query][0][:3]
        assert time.monotonic() - started < BODY_TIMEOUT_S  # else the next check proves nothing
        assert not select.select([slow], [], [], 0)[0]  # the slow client is still waiting
        status, headers, body = read_response(slow)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body) == {"detail": "the request body did not arrive within 2 s (--body_timeout_s)"}


def test_a_client_that_leaves_mid_body_costs_no_error(server, expected):
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # uvicorn logs an app's exception here, traceback and all
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        address = urlsplit(server)
        with socket.create_connection((address.hostname, address.port), timeout=10) as leaving:
            leaving.sendall(head(100) + b'{"queries": [')
            time.sleep(0.2)  # the server is waiting for the rest
        time.sleep(0.2)
        status, answer = post(server, {"queries": [QUERIES[0]]})
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    assert status == 200 and ids(answer["result"][0]) == expected[QUERIES[0]][0][:2]
    assert [record.getMessage() for record in errors] == []


def padded_head(size: int, content_length: int) -> bytes:
    """A /retrieve head of exactly ``size`` bytes (one padding header makes up the rest)."""
    bare = head(content_length, X_Pad="")
    return head(content_length, X_Pad="p" * (size - len(bare)))


def test_a_head_of_exactly_the_limit_is_taken_and_one_byte_more_gets_431(server, limited, expected):
    body = json.dumps({"queries": [QUERIES[0]]}).encode()
    assert limited.max_header_bytes == 16384  # the default
    status, _, answer, _ = exchange(server, padded_head(16384, len(body)), [body])
    assert status == 200 and ids(json.loads(answer)["result"][0]) == expected[QUERIES[0]][0][:2]
    status, headers, answer, _ = exchange(server, padded_head(16385, len(body)), [body])
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(answer) == {"detail": "the request head (request line and headers) is larger than 16384 bytes "
                                            "(--max_header_bytes)"}


def test_an_80_mb_header_is_refused_once_it_passes_the_limit(server, expected):
    # Unbounded, httptools joined it piece by piece: ~80 MB of memory and quadratic CPU.
    request_head = b"POST /retrieve HTTP/1.1\r\nHost: test\r\nX-Big: "
    status, _, answer, sent = exchange(server, request_head, itertools.repeat(b"a" * 4096, 80 * 2**20 // 4096))
    assert status == 431 and "larger than 16384 bytes" in json.loads(answer)["detail"]
    assert sent < 16384 + 20 * 4096  # not the 80 MB offered
    status, answer = post(server, {"queries": [QUERIES[0]]})
    assert status == 200 and ids(answer["result"][0]) == expected[QUERIES[0]][0][:2]


def test_more_than_max_headers_get_431_and_the_limit_itself_is_served(server, limited, expected):
    body = json.dumps({"queries": [QUERIES[1]]}).encode()
    own = 3  # Host, Content-Type, Content-Length
    extra = {f"X_{i}": "1" for i in range(limited.max_headers - own)}
    status, _, answer, _ = exchange(server, head(len(body), **extra), [body])
    assert status == 200 and ids(json.loads(answer)["result"][0]) == expected[QUERIES[1]][0][:2]
    status, headers, answer, _ = exchange(server, head(len(body), X_last="1", **extra), [body])
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(answer) == {"detail": "the request has more than 100 headers (--max_headers)"}


@pytest.mark.parametrize("after_a_request", [False, True], ids=["first request", "later request on a kept-alive connection"])
def test_a_head_trickled_a_byte_at_a_time_gets_408(server, after_a_request):
    # Each byte arrives well within the timeout: the deadline is for the whole head, not per read.
    address = urlsplit(server)
    with socket.create_connection((address.hostname, address.port), timeout=30) as slow:
        if after_a_request:  # the deadline starts again with the next request's first byte
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_response(slow)[0] == 200
        slow.sendall(b"POST /retrieve HTTP/1.1\r\nX-Slow: ")
        for _ in range(int(20 * HEADER_TIMEOUT_S / 0.05)):  # 20 timeouts' worth, unless answered
            if select.select([slow], [], [], 0.05)[0]:
                break
            slow.sendall(b"a")
        status, headers, body = read_response(slow)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body) == {"detail": "the request head did not arrive within 1 s (--header_timeout_s)"}


def test_a_connection_that_sends_nothing_gets_408(server):
    address = urlsplit(server)
    with socket.create_connection((address.hostname, address.port), timeout=30) as silent:
        status, _, body = read_response(silent)
    assert status == 408 and "did not arrive within 1 s" in json.loads(body)["detail"]


def test_connections_beyond_the_limit_get_503_and_those_within_are_served(limited):
    config = replace(limited, max_connections=3, header_timeout_s=30)
    refusal = {"detail": "3 connections are open, the most this server takes (--max_connections); retry shortly"}
    # No health check waits for loading first: these are the server's only connections. Loading or
    # ready (503 or 200), a health answer is a served connection; the refusal says so.
    with serve(create_app(config), config) as url, contextlib.ExitStack() as stack:
        address = urlsplit(url)
        answers = []
        for _ in range(5):
            connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
            stack.callback(connection.close)
            connection.request("GET", "/health")  # kept open afterwards (keep-alive)
            response = connection.getresponse()
            answers.append((response.status, response.getheader("Retry-After"), response.getheader("Connection"),
                            json.loads(response.read())))
    assert [answer == (503, "1", "close", refusal) for answer in answers] == [False, False, False, True, True]


def send_until_closed(sock: socket.socket, seconds: float) -> bool:
    """Send a byte every 50 ms for ``seconds`` or until the server closes the connection: whether it did."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.05)[0]:
            try:
                return sock.recv(1) == b""
            except ConnectionResetError:
                return True
        try:
            sock.sendall(b" ")
        except OSError:  # reset
            return True
    return False


@pytest.fixture(scope="module")
def guarded_server(limited) -> Iterator[str]:
    with ready_server(replace(limited, api_key=TOKEN)) as url:
        yield url


@pytest.mark.parametrize(
    ("request_line", "status"),
    [("POST /retrieve", 401), ("POST /nowhere", 404), ("PUT /retrieve", 405), ("GET /health", 200)],
    ids=["no token", "no such path", "wrong method", "health with a body"],
)
def test_a_request_answered_before_its_body_is_read_ends_its_connection(guarded_server, request_line, status):
    # A client that claims 100 MB and sends them a byte at a time: the app answers without reading
    # the body, and nothing would ever bound the rest (each byte stopped the keep-alive timer).
    address = urlsplit(guarded_server)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(f"{request_line} HTTP/1.1\r\nHost: test\r\nContent-Length: 100000000\r\n\r\n{{".encode())
        assert read_response(sock)[0] == status
        assert send_until_closed(sock, BODY_TIMEOUT_S)


def test_clients_trickling_bodies_nobody_reads_cannot_lock_real_clients_out(limited, expected):
    # 1024 such clients against the default --max_connections 1024, in small: 3 against 3.
    with ready_server(replace(limited, api_key=TOKEN, max_connections=3)) as url, contextlib.ExitStack() as stack:
        address = urlsplit(url)
        for _ in range(3):
            sock = stack.enter_context(socket.create_connection((address.hostname, address.port), timeout=10))
            sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: test\r\nContent-Length: 100000000\r\n\r\n{")
            assert read_response(sock)[0] == 401
            with contextlib.suppress(OSError):  # closed already
                sock.sendall(b" ")  # and a byte now and then
        deadline = time.monotonic() + BODY_TIMEOUT_S  # a refused one closes at once; retried while it does
        while True:
            status, answer = post(url, {"queries": [QUERIES[0]]}, {"Authorization": f"Bearer {TOKEN}"})
            if status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert status == 200 and ids(answer["result"][0]) == expected[QUERIES[0]][0][:2]


def test_a_body_of_exactly_the_limit_is_taken_and_one_byte_more_is_not(limited):
    request = json.dumps({"queries": [QUERIES[0]], "topk": 1}).encode()
    with TestClient(create_app(limited)) as client:
        wait_until_ready(client)
        at_limit = request.ljust(limited.body_limit)  # trailing JSON whitespace
        assert client.post("/retrieve", content=at_limit).status_code == 200
        resp = client.post("/retrieve", content=at_limit + b" ")
    assert resp.status_code == 413 and f"is {limited.body_limit + 1} bytes" in resp.json()["detail"]


def test_the_largest_valid_request_fits_the_derived_limit(limited):
    # 8 queries of 100 characters that Python's json.dumps writes as 12-byte escapes, pretty-printed.
    body = json.dumps({"queries": ["\N{GRINNING FACE}" * 100] * 8, "topk": 100, "return_scores": False}, indent=4).encode()
    assert len(body) > 8 * 100 * 12
    with TestClient(create_app(limited)) as client:
        wait_until_ready(client)
        resp = client.post("/retrieve", content=body)
    assert resp.status_code == 200 and len(resp.json()["result"]) == 8


def test_the_limit_can_be_set(dense_config):
    with TestClient(create_app(replace(dense_config, max_body_bytes=10))) as client:
        wait_until_ready(client)
        resp = client.post("/retrieve", json={"queries": ["q"]})
    assert resp.status_code == 413 and "takes at most 10 (--max_body_bytes)" in resp.json()["detail"]


@pytest.mark.parametrize(
    "authorization, problem",
    [
        (None, "this server requires an access token"),
        (f"Basic {TOKEN}", "this server requires an access token"),
        ("Bearer wrong", "the access token is wrong"),
        (f"Bearer {TOKEN}x", "the access token is wrong"),
        (f"Bearer {TOKEN[:-1]}", "the access token is wrong"),
    ],
)
def test_a_missing_or_wrong_token_gets_401(guarded, authorization, problem):
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = guarded.post("/retrieve", json={"queries": [QUERIES[0]]}, headers=headers)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert resp.json() == {"detail": f"{problem}: send the header 'Authorization: Bearer <token>' with the server's "
                                     "--api_key (clients: RETRIEVAL_API_KEY)"}


def test_the_right_token_gets_the_documents(guarded, expected):
    resp = guarded.post("/retrieve", json={"queries": [QUERIES[1]], "topk": 3}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200 and ids(resp.json()["result"][0]) == expected[QUERIES[1]][0][:3]


def test_health_stays_open_and_never_shows_the_token(guarded):
    resp = guarded.get("/health")
    assert resp.status_code == 200 and resp.json()["config"]["api_key"] == "<redacted>"
    assert TOKEN not in resp.text
    assert TOKEN not in repr(replace(ServerConfig(index_path="i", corpus_path="c"), api_key=TOKEN))


def test_each_request_leaves_one_log_line_and_never_the_token(guarded, limited, caplog):
    caplog.set_level(logging.INFO, logger="local_dense_retriever.app")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.post("/retrieve", json={"queries": QUERIES[:2], "topk": 1}, headers=auth).status_code == 200
    assert guarded.post("/retrieve", json={"queries": QUERIES[:1], "topk": 1}, headers=auth).status_code == 200
    assert guarded.post("/retrieve", json={"queries": ["q"]}, headers={"Authorization": "Bearer wrong-guess"}).status_code == 401
    assert guarded.post("/retrieve", json={"queries": ["q"]}).status_code == 401
    assert guarded.post("/retrieve", json={"queries": ["q"], "top_k": 1}, headers=auth).status_code == 422
    assert guarded.post("/retrieve", content=b"x" * (limited.body_limit + 1), headers=auth).status_code == 413
    assert guarded.get("/health").status_code == 200  # polled by clients and orchestrators: DEBUG, not INFO
    lines = [re.sub(r" in \d+\.\d ms", " in X ms", r.getMessage()) for r in caplog.records
             if r.name == "local_dense_retriever.app" and r.levelno == logging.INFO]
    assert lines == [
        "POST /retrieve 200 in X ms, 2 queries (client testclient:50000)",
        "POST /retrieve 200 in X ms, 1 query (client testclient:50000)",
        "POST /retrieve 401 in X ms (client testclient:50000)",
        "POST /retrieve 401 in X ms (client testclient:50000)",
        "POST /retrieve 422 in X ms (client testclient:50000)",
        "POST /retrieve 413 in X ms (client testclient:50000)",
    ]
    assert TOKEN not in caplog.text and "wrong-guess" not in caplog.text and QUERIES[0] not in caplog.text


def test_the_request_log_can_be_switched_off(dense_config, caplog):
    caplog.set_level(logging.INFO, logger="local_dense_retriever.app")
    config = config_from_args(build_parser().parse_args(
        ["--index_path", dense_config.index_path, "--corpus_path", dense_config.corpus_path, "--retriever_name", "e5",
         "--retriever_model", dense_config.retriever_model, "--no_request_log"]))
    with TestClient(create_app(config)) as client:
        wait_until_ready(client)
        assert client.post("/retrieve", json={"queries": ["q"]}).status_code == 200
    assert not [r for r in caplog.records if r.getMessage().startswith("POST /retrieve")]


def test_health_shows_the_head_and_connection_limits_and_the_flags_set_them(guarded):
    config = guarded.get("/health").json()["config"]
    assert {name: config[name] for name in ("max_header_bytes", "max_headers", "header_timeout_s", "max_connections")} == {
        "max_header_bytes": 16384, "max_headers": 100, "header_timeout_s": 10.0, "max_connections": 1024}
    flags = ["--max_header_bytes", "4096", "--max_headers", "20", "--header_timeout_s", "2.5", "--max_connections", "64"]
    set_by_flags = config_from_args(build_parser().parse_args(["--index_path", "i", "--corpus_path", "c", *flags]))
    assert (set_by_flags.max_header_bytes, set_by_flags.max_headers, set_by_flags.header_timeout_s,
            set_by_flags.max_connections) == (4096, 20, 2.5, 64)


def test_the_token_comes_from_the_flag_or_the_environment(monkeypatch):
    def api_key(*flags: str) -> str | None:
        return config_from_args(build_parser().parse_args(["--index_path", "i", "--corpus_path", "c", *flags])).api_key

    monkeypatch.setenv("RETRIEVAL_API_KEY", "token-from-the-env")
    assert (api_key(), api_key("--api_key", "token-from-the-flag")) == ("token-from-the-env", "token-from-the-flag")
    monkeypatch.setenv("RETRIEVAL_API_KEY", "")
    assert api_key() is None
    assert api_key("--api_key", "a-token-of-16chr") == "a-token-of-16chr"  # the shortest taken (15 is refused below)
    assert server_config.MIN_KEY_CHARS == plugin_settings.MIN_KEY_CHARS == 16  # the clients take what the server takes


@pytest.mark.parametrize(
    "settings_, message",
    [
        ({"api_key": ""}, "--api_key (or RETRIEVAL_API_KEY) must be non-empty printable ASCII"),
        ({"api_key": "two words"}, "must be non-empty printable ASCII without spaces"),
        ({"api_key": "a-token-of-15ch"}, "--api_key (or RETRIEVAL_API_KEY) is shorter than 16 characters, too short to be "
                                          "a secret (value not shown)"),
        ({"max_topk": 2, "topk": 3}, "--topk (3) must be at most --max_topk (2)"),
        ({"max_body_bytes": 0}, "--max_body_bytes must be at least 1"),
        ({"body_timeout_s": 0}, "--body_timeout_s must be > 0"),
        ({"header_timeout_s": 0}, "--header_timeout_s must be > 0"),
        ({"max_header_bytes": 0}, "--max_header_bytes must be at least 1"),
        ({"max_headers": 0}, "--max_headers must be at least 1"),
        ({"max_connections": 0}, "--max_connections must be at least 1"),
        ({"max_query_chars": 0}, "--max_query_chars must be at least 1"),
    ],
)
def test_bad_limits_are_refused_at_start(settings_, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ServerConfig(index_path="i", corpus_path="c", **settings_)


def schema_of(app) -> tuple[dict, dict]:
    doc = app.openapi()
    return doc, doc["paths"]["/retrieve"]["post"]


def test_openapi_lists_every_answer_with_its_body(dense_config):
    doc, retrieve = schema_of(create_app(replace(dense_config, api_key=TOKEN)))
    responses = retrieve["responses"]
    assert set(responses) == {"200", "401", "408", "413", "422", "431", "500", "503"}
    refs = {status: r["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1] for status, r in responses.items()}
    assert refs == {"200": "RetrieveResponse", "401": "ErrorMessage", "408": "ErrorMessage", "413": "ErrorMessage",
                    "422": "ValidationErrorBody", "431": "ErrorMessage", "500": "ErrorMessage", "503": "ErrorMessage"}
    assert responses["503"]["headers"]["Retry-After"]["required"] is True
    assert responses["401"]["headers"]["WWW-Authenticate"]["schema"]["const"] == "Bearer"
    assert doc["components"]["securitySchemes"] == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "the server's --api_key (or RETRIEVAL_API_KEY)"}}
    assert retrieve["security"] == [{"HTTPBearer": []}]
    assert set(doc["paths"]["/health"]["get"]["responses"]) == {"200", "408", "431", "503"}
    assert "security" not in doc["paths"]["/health"]["get"]


def test_openapi_without_a_token_declares_none(dense_config):
    doc, retrieve = schema_of(create_app(dense_config))
    assert "401" not in retrieve["responses"] and "security" not in retrieve and "securitySchemes" not in doc["components"]


def test_openapi_request_schema_states_every_constraint(dense_config):
    _, retrieve = schema_of(create_app(dense_config))
    request = retrieve["requestBody"]
    assert request["required"] is True
    schema = request["content"]["application/json"]["schema"]
    queries, topk = schema["properties"]["queries"], schema["properties"]["topk"]
    assert (queries["type"], queries["minItems"], queries["maxItems"]) == ("array", 1, 8)
    assert queries["items"] == {"type": "string", "maxLength": 100}  # a blank query is answered, with []
    assert topk["anyOf"] == [{"type": "integer", "minimum": 1, "maximum": 100}, {"type": "null"}]
    assert schema["properties"]["return_scores"]["type"] == "boolean" and schema["required"] == ["queries"]
    assert schema["propertyNames"] == {"not": {"pattern": NEAR_MISS_PATTERN}}  # top_k, returnScores... get 422


@pytest.fixture(scope="module")
def api_schema(dense_config):
    with ready_server(replace(dense_config, api_key=TOKEN)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


fuzzed = schemathesis.pytest.from_fixture("api_schema")


@fuzzed.parametrize()
@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_server_keeps_every_promise_of_its_openapi_document(case):
    # All of schemathesis' checks (no 5xx, documented statuses and bodies, valid data accepted,
    # invalid data refused, auth not ignored...) on generated requests, valid and invalid.
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})


def test_a_uvicorn_whose_protocol_lost_a_method_the_bounds_extend_is_refused():
    """The bounds extend an internal uvicorn class: a release that changed it fails at import, not silently."""
    changed = type("Protocol", (), {name: lambda self: None for name in http_limits.EXTENDED if name != "send_400_response"})
    with pytest.raises(ImportError, match=r"^uvicorn 9\.9's httptools protocol has no send_400_response, .*0\.29 to 0\.54$"):
        http_limits.check_protocol(changed, "9.9")
    http_limits.check_protocol(HttpToolsProtocol, uvicorn.__version__)  # the installed one passes
