"""The local retriever client against real loopback /retrieve servers."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web

from local_search_server import local_search, local_search_stats, parse_retrieve_response
from search_r1_slime.http_client import RequestFailed, close_shared_session
from tests.fakes.loopback import LoopbackServer
from tests.fakes.retriever import FakeRetriever, doc

# Fast retries so failure tests stay short; tests that check batching use a generous wait.
FAST = {"max_attempts": 3, "attempt_timeout": 1.0}


def corpus_of(queries, per_query=3, tag=""):
    return {q: [doc(f"{tag}{q}-{i}", f"{tag}{q} title {i}", f"text {i} about {q}") for i in range(per_query)] for q in queries}


def expected(docs, top_k):
    return [{"document": {"contents": d["contents"]}} for d in docs[:top_k]]


def dead_url() -> str:
    """A loopback URL nobody listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/retrieve"


@pytest.fixture(autouse=True)
async def session_cleanup():
    yield
    await close_shared_session()


@pytest.fixture
async def retriever():
    async with FakeRetriever(corpus_of([f"q{i}" for i in range(100)] + ["who wrote hamlet"])) as server:
        yield server


async def test_contract_call_returns_upstream_format(retriever):
    # Exactly how generate_with_search.py calls it: every key of SEARCH_R1_CONFIGS["local"] as keywords.
    config = {"search_url": retriever.search_url, "proxy": None}
    result = await local_search(query="who wrote hamlet", top_k=2, timeout=30, **config)
    assert result == expected(retriever.corpus["who wrote hamlet"], 2)
    assert retriever.requests == [{"queries": ["who wrote hamlet"], "topk": 2, "return_scores": True}]


async def test_many_concurrent_distinct_queries_each_get_their_own_documents_in_one_request(retriever):
    queries = [f"q{i}" for i in range(50)]
    results = await asyncio.gather(*(local_search(retriever.search_url, q, top_k=3, batch_wait=0.05) for q in queries))
    for query, result in zip(queries, results):
        assert result == expected(retriever.corpus[query], 3)
    assert len(retriever.requests) == 1
    assert sorted(retriever.requests[0]["queries"]) == sorted(queries)
    stats = local_search_stats()
    assert (stats.sent, stats.batches, stats.http_requests) == (50, 1, 1)


async def test_staggered_callers_sharing_queries_never_get_another_callers_documents(retriever):
    # 200 callers over 40 queries (5 each, like GRPO samples), arriving over ~50 ms in small batches.
    queries = [f"q{i % 40}" for i in range(200)]

    async def caller(index: int, query: str) -> list[dict]:
        await asyncio.sleep((index * 7 % 50) / 1000)
        return await local_search(retriever.search_url, query, top_k=3, batch_wait=0.005, max_queries_per_request=8)

    results = await asyncio.gather(*(caller(i, q) for i, q in enumerate(queries)))
    assert results == [expected(retriever.corpus[q], 3) for q in queries]
    assert sorted(retriever.queries_received) == sorted(set(queries))  # each query sent exactly once
    assert 1 < len(retriever.requests) < 40
    assert all(len(body["queries"]) <= 8 for body in retriever.requests)


async def test_requests_never_exceed_max_queries_per_request(retriever):
    queries = [f"q{i}" for i in range(10)]
    results = await asyncio.gather(
        *(local_search(retriever.search_url, q, top_k=1, batch_wait=0.05, max_queries_per_request=4) for q in queries)
    )
    assert results == [expected(retriever.corpus[q], 1) for q in queries]
    assert [len(body["queries"]) for body in retriever.requests] == [4, 4, 2]


async def test_identical_queries_in_flight_go_out_once(retriever):
    results = await asyncio.gather(*(local_search(retriever.search_url, "q7", top_k=3, cache=False) for _ in range(20)))
    assert results == [expected(retriever.corpus["q7"], 3)] * 20
    assert retriever.queries_received == ["q7"]
    assert local_search_stats().in_flight_hits == 19
    # Each caller has its own copy: editing one result leaves the others alone.
    results[0][0]["document"]["contents"] = "edited"
    assert results[1] == expected(retriever.corpus["q7"], 3)


async def test_finished_answers_are_cached_per_query_and_top_k(retriever):
    first = await local_search(retriever.search_url, "q1", top_k=2)
    assert await local_search(retriever.search_url, "q1", top_k=2) == first
    assert len(retriever.requests) == 1
    assert await local_search(retriever.search_url, "q1", top_k=3) == expected(retriever.corpus["q1"], 3)
    assert len(retriever.requests) == 2
    assert local_search_stats().cache_hits == 1


async def test_cache_is_keyed_by_servers_so_another_backend_never_serves_its_answers():
    async with FakeRetriever(corpus_of(["q"], tag="A-")) as a, FakeRetriever(corpus_of(["q"], tag="B-")) as b:
        assert await local_search(a.search_url, "q", top_k=1) == expected(a.corpus["q"], 1)
        assert await local_search(b.search_url, "q", top_k=1) == expected(b.corpus["q"], 1)
        assert (len(a.requests), len(b.requests)) == (1, 1)


async def test_cache_can_be_switched_off_and_is_bounded_lru(retriever):
    for _ in range(2):
        await local_search(retriever.search_url, "q1", top_k=1, cache=False)
    assert retriever.queries_received == ["q1", "q1"]
    retriever.requests.clear()
    for query in ["q1", "q2", "q1", "q3", "q1", "q2"]:  # size 2: q3 evicts q2 (q1 was used later)
        await local_search(retriever.search_url, query, top_k=1, cache_size=2)
    assert retriever.queries_received == ["q1", "q2", "q3", "q2"]


async def test_transient_failures_are_retried(retriever):
    retriever.failures.extend([503, "drop", 429])
    assert await local_search(retriever.search_url, "q1", top_k=1, max_attempts=4, attempt_timeout=1.0) == expected(retriever.corpus["q1"], 1)
    assert len(retriever.requests) == 4


async def test_a_failed_batch_fails_every_caller_is_not_cached_and_does_not_block_the_next(retriever):
    retriever.failures.extend([500, 500, 500])
    outcomes = await asyncio.gather(
        *(local_search(retriever.search_url, q, top_k=1, batch_wait=0.05, **FAST) for q in ["q1", "q2", "q3"]),
        return_exceptions=True,
    )
    assert all(isinstance(o, RequestFailed) and "HTTP 500" in str(o) for o in outcomes), outcomes
    assert [len(body["queries"]) for body in retriever.requests] == [3, 3, 3]
    # Nothing cached and nothing stuck: the same queries now succeed.
    results = await asyncio.gather(*(local_search(retriever.search_url, q, top_k=1, **FAST) for q in ["q1", "q2", "q3"]))
    assert results == [expected(retriever.corpus[q], 1) for q in ["q1", "q2", "q3"]]


async def test_a_hanging_batch_does_not_hold_up_a_concurrent_one():
    async with FakeRetriever(corpus_of(["slow"]), hang_s=1.5) as slow, FakeRetriever(corpus_of(["fast"])) as fast:
        slow.failures.append("hang")
        slow_call = asyncio.ensure_future(local_search(slow.search_url, "slow", top_k=1, timeout=1, max_attempts=1))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await local_search(fast.search_url, "fast", top_k=1) == expected(fast.corpus["fast"], 1)
        assert time.monotonic() - started < 0.5
        with pytest.raises(RequestFailed, match="TimeoutError"):
            await slow_call


async def test_cancelled_caller_does_not_cancel_the_shared_search(retriever):
    retriever.request_cost_s = 0.2
    first = asyncio.ensure_future(local_search(retriever.search_url, "q5", top_k=1))
    second = asyncio.ensure_future(local_search(retriever.search_url, "q5", top_k=1))
    await asyncio.sleep(0.05)
    first.cancel()
    assert await second == expected(retriever.corpus["q5"], 1)
    assert first.cancelled()


async def test_requests_are_spread_over_several_servers():
    queries = [f"q{i}" for i in range(6)]
    async with FakeRetriever(corpus_of(queries)) as a, FakeRetriever(corpus_of(queries)) as b:
        for query in queries:
            assert await local_search([a.search_url, b.search_url], query, top_k=1) == expected(a.corpus[query], 1)
        assert (len(a.requests), len(b.requests)) == (3, 3)


async def test_a_dead_server_is_skipped_while_another_answers():
    queries = [f"q{i}" for i in range(6)]
    async with FakeRetriever(corpus_of(queries)) as live:
        servers = [dead_url(), live.search_url]
        started = time.monotonic()
        for query in queries:
            assert await local_search(servers, query, top_k=1, **FAST) == expected(live.corpus[query], 1)
        assert time.monotonic() - started < 2
        assert len(live.requests) == 6


async def test_a_hung_server_fails_over_within_the_deadline():
    async with FakeRetriever(corpus_of(["q"]), hang_s=1) as hung, FakeRetriever(corpus_of(["q"])) as live:
        hung.failures.append("hang")
        started = time.monotonic()
        result = await local_search([hung.search_url, live.search_url], "q", top_k=1, timeout=5, attempt_timeout=0.5)
        assert result == expected(live.corpus["q"], 1)
        assert time.monotonic() - started < 1.5


async def test_all_servers_dead_fails_within_the_timeout_with_every_reason():
    started = time.monotonic()
    with pytest.raises(RequestFailed, match=r"all 2 retrieval servers failed: .*ClientConnectorError") as info:
        await local_search([dead_url(), dead_url()], "q", top_k=1, timeout=1.5)
    assert time.monotonic() - started < 2.0
    assert info.value.status is None


async def test_a_hung_retriever_fails_within_the_configured_timeout():
    async with FakeRetriever(corpus_of(["q"]), hang_s=1.5) as hung:
        hung.failures.extend(["hang"] * 5)
        started = time.monotonic()
        with pytest.raises(RequestFailed, match="TimeoutError"):
            await local_search(hung.search_url, "q", top_k=1, timeout=1.0)
        assert time.monotonic() - started < 1.5


async def test_a_client_error_is_not_retried_on_other_servers():
    async with FakeRetriever({}) as a, FakeRetriever({}) as b:
        a.failures.append(422)
        b.failures.append(422)
        with pytest.raises(RequestFailed, match="HTTP 422") as info:
            await local_search([a.search_url, b.search_url], "q", top_k=1)
        assert info.value.status == 422
        assert len(a.requests) + len(b.requests) == 1


async def serve_json(answer):
    async def handler(request):
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/retrieve", handler)
    return LoopbackServer(app)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"results": []}, "without a 'result' list"),
        ({"result": [[], []]}, "answered 2 result lists for 1 queries"),
        ({"result": [[{"document": {"id": "1"}, "score": 0.5}]]}, "item 0 of query 0 without a 'contents' string"),
        ({"result": ["oops"]}, "a str instead of a list for query 0"),
    ],
)
async def test_malformed_answers_raise_a_clear_error(answer, message):
    async with await serve_json(answer) as server:
        with pytest.raises(RequestFailed, match=message):
            await local_search(server.url("/retrieve"), "q", top_k=1, max_attempts=1)


def test_both_response_shapes_are_parsed():
    d1, d2, d3 = doc("1", "A", "a"), doc("2", "B", "b"), {"id": "3", "contents": ""}
    plain = {"result": [[d1, d2], [d3]]}
    scored = {"result": [[{"document": d1, "score": 0.9}, {"document": d2, "score": 0.8}], [{"document": d3, "score": 0.1}]]}
    want = [
        [{"document": {"contents": '"A"\na'}}, {"document": {"contents": '"B"\nb'}}],
        [{"document": {"contents": '"No title."\nNo snippet available.'}}],
    ]
    assert parse_retrieve_response(plain, 2) == want
    assert parse_retrieve_response(scored, 2) == want


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"search_url": []}, r"search_r1\.local\.search_url must be a URL or a non-empty list of URLs"),
        ({"top_k": 0}, r"search_r1\.topk must be at least 1, got 0"),
        ({"timeout": 0}, r"search_r1\.search_timeout must be positive, got 0"),
        ({"max_queries_per_request": 0}, r"search_r1\.local\.max_queries_per_request must be at least 1, got 0"),
        ({"cache_size": -1}, r"search_r1\.local\.cache_size must be at least 0, got -1"),
        ({"max_attempts": 0}, r"search_r1\.local\.max_attempts must be at least 1, got 0"),
        ({"attempt_timeout": 0}, r"search_r1\.local\.attempt_timeout must be positive, got 0"),
        ({"proxy": "socks5://p:1080"}, r"search_r1\.local\.proxy must be None or an http\(s\) proxy URL"),
        ({"batch_wait": 2, "timeout": 1}, r"search_r1\.local\.batch_wait \(2\.0\) must be below search_r1\.search_timeout"),
        ({"max_batch_size": 8}, r"unknown search_r1 setting\(s\): local\.max_batch_size"),
    ],
)
async def test_bad_configuration_is_rejected_before_any_request(retriever, kwargs, message):
    arguments = {"search_url": retriever.search_url, "query": "q1", **kwargs}
    with pytest.raises(ValueError, match=message):
        await local_search(**arguments)
    assert retriever.requests == []


def test_state_is_per_event_loop():
    # slime keeps one loop; scripts and tests may run several in turn. Nothing may leak across.
    async def one_run(server_corpus):
        async with FakeRetriever(server_corpus) as server:
            result = await asyncio.gather(*(local_search(server.search_url, q, top_k=1) for q in server_corpus))
            await close_shared_session()
            return result, local_search_stats().sent

    corpus = corpus_of(["x", "y"])
    for _ in range(2):
        assert asyncio.run(one_run(corpus)) == ([expected(corpus["x"], 1), expected(corpus["y"], 1)], 2)
