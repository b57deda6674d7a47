"""The shared retry loop against a real aiohttp server on loopback."""

import asyncio
import dataclasses
import email.utils
import socket
import time
from types import SimpleNamespace

import pytest
from aiohttp import web

from search_r1_slime import http_client
from search_r1_slime.http_client import (
    RequestFailed,
    RetryPolicy,
    _retry_after_seconds,
    close_shared_session,
    request_json,
    shared_session,
)
from tests.fakes.loopback import LoopbackServer

FAST = RetryPolicy(max_attempts=4, deadline_s=5.0, attempt_timeout_s=1.0, backoff_base_s=0.01, backoff_max_s=0.02)


async def serve(handler):
    """Start `handler` on a free loopback port; return (url, server)."""
    app = web.Application()
    app.router.add_route("*", "/x", handler)
    server = await LoopbackServer(app).__aenter__()
    return server.url("/x"), server


def scripted(*responses):
    """A handler that answers with the given (status, body, headers) in turn and counts calls."""
    calls = []

    async def handler(request):
        calls.append(await request.json() if request.can_read_body else None)
        status, body, headers = responses[min(len(calls), len(responses)) - 1]
        if status == "hang":
            await asyncio.sleep(2)  # well past the 0.4 s attempt timeout; short so teardown is quick
        return web.Response(status=status, text=body, headers=headers or {})

    return handler, calls


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.fixture
async def cleanup():
    runners = []
    yield runners
    for server in runners:
        await server.__aexit__(None, None, None)
    await close_shared_session()


async def test_retries_5xx_and_429_then_returns_json(cleanup):
    handler, calls = scripted((503, "busy", None), (429, "slow down", None), (200, '{"ok": 1}', None))
    url, runner = await serve(handler)
    cleanup.append(runner)
    assert await request_json("POST", url, json={"q": "a"}, policy=FAST) == {"ok": 1}
    assert calls == [{"q": "a"}] * 3


async def test_client_error_is_not_retried(cleanup):
    handler, calls = scripted((404, "no such route", None), (200, "{}", None))
    url, runner = await serve(handler)
    cleanup.append(runner)
    with pytest.raises(RequestFailed, match="HTTP 404: 'no such route'") as info:
        await request_json("POST", url, json={}, policy=FAST)
    assert info.value.status == 404
    assert len(calls) == 1


async def test_gives_up_after_max_attempts_with_last_error(cleanup):
    handler, calls = scripted((500, "boom", None))
    url, runner = await serve(handler)
    cleanup.append(runner)
    with pytest.raises(RequestFailed, match=r"retrieve to .* failed after 4 attempt\(s\).*HTTP 500: 'boom'") as info:
        await request_json("POST", url, json={}, policy=FAST, what="retrieve")
    assert info.value.status == 500
    assert len(calls) == 4


async def test_retry_after_is_honoured(cleanup):
    handler, calls = scripted((429, "", {"Retry-After": "0.3"}), (200, "[1]", None))
    url, runner = await serve(handler)
    cleanup.append(runner)
    started = time.monotonic()
    assert await request_json("GET", url, policy=FAST) == [1]
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("when", ["seconds", "http-date"])
async def test_retry_after_beyond_deadline_gives_up_at_once(cleanup, when):
    retry_after = "60" if when == "seconds" else _http_date(3600)
    handler, calls = scripted((429, "", {"Retry-After": retry_after}))
    url, runner = await serve(handler)
    cleanup.append(runner)
    started = time.monotonic()
    with pytest.raises(RequestFailed, match="HTTP 429"):
        await request_json("GET", url, policy=FAST)
    assert time.monotonic() - started < 1.0
    assert len(calls) == 1


async def test_hanging_server_is_bounded_by_the_deadline(cleanup):
    handler, calls = scripted(("hang", "", None))
    url, runner = await serve(handler)
    cleanup.append(runner)
    policy = RetryPolicy(max_attempts=100, deadline_s=1.5, attempt_timeout_s=0.4, backoff_base_s=0.01)
    started = time.monotonic()
    with pytest.raises(RequestFailed, match="TimeoutError"):
        await request_json("POST", url, json={}, policy=policy)
    assert time.monotonic() - started < 2.5
    assert 2 <= len(calls) <= 5


async def test_dead_server_fails_with_connection_error(cleanup):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RequestFailed, match="failed after 4 attempt.*Connect") as info:
        await request_json("POST", f"http://127.0.0.1:{port}/x", json={}, policy=FAST)
    assert info.value.status is None


async def test_non_json_body_is_a_clear_error(cleanup):
    handler, calls = scripted((200, "<html>proxy login</html>", None))
    url, runner = await serve(handler)
    cleanup.append(runner)
    with pytest.raises(RequestFailed, match="not JSON.*proxy login"):
        await request_json("GET", url, policy=FAST)
    assert len(calls) == 1


async def test_one_session_per_event_loop(cleanup):
    first = shared_session()
    assert shared_session() is first
    await close_shared_session()
    assert first.closed
    assert shared_session() is not first


def test_a_loop_that_ends_closes_its_sessions_and_their_connections():
    """What slime's fully async worker does: asyncio.run in a thread of its own, which ends. The
    loop's sessions (the kept-alive connection in them included) end with it, not at exit with
    aiohttp's "Unclosed client session" warning."""

    async def search_then_end():
        async def ok(request):
            return web.json_response({"ok": True})

        url, server = await serve(ok)
        try:
            assert await request_json("GET", url, policy=FAST) == {"ok": True}
            return shared_session(), shared_session(public_only=True)
        finally:
            await server.__aexit__(None, None, None)

    sessions = asyncio.run(search_then_end())
    assert [session.closed for session in sessions] == [True, True]


def test_a_session_closed_before_its_loop_ends_is_replaced_and_the_new_one_closed_with_the_loop():
    async def close_early():
        first = shared_session()
        await close_shared_session()
        return first, shared_session()

    first, second = asyncio.run(close_early())
    assert first is not second
    assert [first.closed, second.closed] == [True, True]


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="deadline_s must be positive"):
        RetryPolicy(deadline_s=0)


def test_policy_needs_a_deadline_or_an_attempt_count():
    with pytest.raises(ValueError, match="needs max_attempts or deadline_s"):
        RetryPolicy(max_attempts=None, deadline_s=None)


async def test_by_default_retries_last_until_the_deadline_not_a_few_attempts(cleanup):
    ready_at = time.monotonic() + 1.2

    async def handler(request):
        if time.monotonic() < ready_at:
            return web.Response(status=503, text="loading")
        return web.json_response({"ok": 1})

    url, runner = await serve(handler)
    cleanup.append(runner)
    policy = RetryPolicy(deadline_s=3.0, attempt_timeout_s=1.0, backoff_base_s=0.05, backoff_max_s=0.1)
    assert await request_json("GET", url, policy=policy) == {"ok": 1}  # far more than 5 attempts


async def test_failures_after_sending_are_not_retried_when_the_policy_says_so(cleanup):
    handler, calls = scripted(("hang", "", None), (200, "{}", None))
    url, runner = await serve(handler)
    cleanup.append(runner)
    policy = RetryPolicy(max_attempts=3, deadline_s=None, attempt_timeout_s=0.4, retry_after_send=False)
    with pytest.raises(RequestFailed, match="TimeoutError"):
        await request_json("POST", url, json={}, policy=policy)
    assert len(calls) == 1


async def test_several_servers_fail_over_to_one_that_answers(cleanup, monkeypatch):
    handler, _ = scripted((200, '{"ok": 1}', None))
    url, runner = await serve(handler)
    cleanup.append(runner)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/x"
    # The dead server's back-off must outlast the test: with FAST's 10 ms, a loaded machine reaches
    # the next attempt after it, and the dead server is then rightly probed again first.
    monkeypatch.setattr(http_client.random, "uniform", lambda low, high: high)
    policy = dataclasses.replace(FAST, backoff_base_s=60.0, backoff_max_s=60.0)
    sent = []
    assert await request_json("GET", [dead, url], policy=policy, on_attempt=sent.append) == {"ok": 1}
    assert sent == [dead, url]


async def test_retry_after_as_an_http_date_is_honoured(cleanup):
    # An HTTP-date has whole seconds: 2 s ahead is between 1 and 2 s away when it is read.
    handler, calls = scripted((503, "", {"Retry-After": _http_date(2)}), (200, "[1]", None))
    url, runner = await serve(handler)
    cleanup.append(runner)
    started = time.monotonic()
    assert await request_json("GET", url, policy=FAST) == [1]
    assert time.monotonic() - started >= 1.0
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("-1", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None), (None, None)],
    ids=["seconds", "negative", "date-in-the-past", "garbage", "absent"],
)
def test_retry_after_forms(value, expected):
    assert _retry_after_seconds(value) == expected
async def test_a_failed_server_waits_out_a_doubling_backoff_capped_at_2_s_then_is_probed_first(monkeypatch):
    """docs/retrieval-server.md, "Several nodes": no batch for up to 0.25 s after the first failure, doubling with
    every failed probe up to 2 s; then the next batch probes it, before the servers that answer."""
    clock = [100.0]
    monkeypatch.setattr(http_client, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(http_client.random, "uniform", lambda low, high: high)  # the longest back-off each time
    health, policy, servers = http_client._Health(), RetryPolicy(), ["http://a/x", "http://b/x"]
    failure = http_client._Retryable("ClientConnectorError")

    assert await health.turn(servers, None, True) == ("http://a/x", False)
    health.record("http://a/x", False, failure, policy)
    waits = []
    for _ in range(6):
        wait = health.circuit("http://a/x").retry_at - clock[0]
        clock[0] += wait - 0.01
        assert await health.turn(servers, None, True) == ("http://b/x", False)  # backing off: b takes the batch
        clock[0] += 0.01
        assert await health.turn(servers, None, True) == ("http://a/x", True)  # due: probed first, b still up
        health.record("http://a/x", True, failure, policy)
        waits.append(round(wait, 6))
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert (policy.backoff_base_s, policy.backoff_max_s) == (0.25, 2.0)
    health.record("http://a/x", True, None, policy)  # a probe answered: back in the round robin
    assert await health.turn(servers, None, True) == ("http://a/x", False)
