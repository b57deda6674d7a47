"""One query's problem is that query's alone: a blank, too long or refused query never fails the
searches batched with it. The retrieval stand-in refuses a whole request for one bad query (422),
as a server that validates whole requests does."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import pytest

from generate_with_search import EMPTY_QUERY_TEXT, INFORMATION_HEAD, INFORMATION_TAIL, generate, passages_to_string
from local_search_server import local_search, local_search_stats
from search_r1_slime.http_client import RequestFailed, close_shared_session
from search_r1_slime.rollout_metrics import rollout_metrics
from tests.fakes.retriever import FakeRetriever, doc
from tests.fakes.sample import NewSample
from tests.fakes.sglang import FakeSGLangGroup, Turn
from tests.test_retrieval_server import DOCS, QUERIES, dense_config, expected  # noqa: F401 (fixtures)
from tests.test_retrieval_server_limits import ready_server

ANSWER = "<answer> done </answer>"
GROUP = 8
BLANK = 3  # the script whose search is blank


@pytest.fixture(autouse=True)
async def session_cleanup():
    yield
    await close_shared_session()


def corpus_of(queries: list[str]) -> dict[str, list[dict]]:
    return {q: [doc(f"{q}-{k}", f"{q} title {k}", f"passage {k} about {q}") for k in range(3)] for q in queries}


def documents(corpus: dict[str, list[dict]], query: str, top_k: int = 3) -> list[dict]:
    return [{"document": {"contents": d["contents"]}} for d in corpus[query][:top_k]]


async def test_a_grpo_group_with_one_blank_search_gives_every_other_sample_its_own_passages(tokenizer, tokenizer_dir):
    # One prompt, eight samples (a GRPO group), all searching at once; sample BLANK writes <search> </search>.
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Answer with one search."}], tokenize=False, add_generation_prompt=True
    )
    queries = {k: f"group question {k}" for k in range(GROUP) if k != BLANK}
    searches = {k: f"<think> sample {k} </think>\n<search> {queries.get(k, ' ')} </search>" for k in range(GROUP)}
    corpus = corpus_of(list(queries.values()))
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    scripts = [[Turn(searches[k]), Turn(ANSWER)] for k in range(GROUP)]

    def expected(k: int) -> str:
        body = EMPTY_QUERY_TEXT if k == BLANK else passages_to_string(documents(corpus, queries[k])).strip()
        return searches[k] + INFORMATION_HEAD + body + INFORMATION_TAIL + ANSWER

    async with FakeSGLangGroup(tokenizer, prompt_ids, scripts) as sglang, FakeRetriever(corpus) as retriever:
        args = SimpleNamespace(
            sglang_router_ip="127.0.0.1",
            sglang_router_port=sglang.port,
            hf_checkpoint=tokenizer_dir,
            partial_rollout=False,
            # A long batching wait, so the group's queries share requests.
            search_r1={"max_turns": 1, "search_timeout": 10, "local": {"search_url": retriever.search_url, "batch_wait": 1.0}},
        )
        params = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 300, "stop": None, "no_stop_trim": True}
        samples = await asyncio.gather(
            *(generate(args, NewSample(prompt=prompt, label={"ground_truth": {"target": ["done"]}}), dict(params)) for _ in range(GROUP))
        )

    # Samples take the scripts in arrival order: each response tells which script it ran.
    script_of = {i: next((k for k in range(GROUP) if s.response == expected(k)), None) for i, s in enumerate(samples)}
    assert sorted(k for k in script_of.values() if k is not None) == list(range(GROUP)), [s.response for s in samples]
    for i, sample in enumerate(samples):
        blank = script_of[i] == BLANK
        metrics = sample.metadata["search_r1"]
        assert (metrics["searches"], metrics["empty_queries"], metrics["search_failures"]) == ((0, 1, 0) if blank else (1, 0, 0))
        assert sample.status == NewSample.Status.COMPLETED
    # The blank query never reached the server; every other query reached it once.
    assert sorted(retriever.queries_received) == sorted(queries.values())
    assert len(retriever.requests) < len(queries)  # they did travel together
    assert rollout_metrics(samples)["search_r1/empty_query_ratio"] == 1 / GROUP
    assert rollout_metrics(samples)["search_r1/failed_search_ratio"] == 0.0


async def test_a_query_the_server_refuses_fails_alone_and_the_others_get_their_documents():
    # The client's cap (4096 characters) is above this server's (50): the server refuses the request.
    good = [f"q{i}" for i in range(6)]
    long_query = "a question of sixty characters, longer than the server takes"
    corpus = corpus_of(good + [long_query])
    async with FakeRetriever(corpus, max_query_chars=50) as retriever:
        outcomes = await asyncio.gather(
            *(local_search(retriever.search_url, q, top_k=2, timeout=5, batch_wait=0.05) for q in [*good[:3], long_query, *good[3:]]),
            return_exceptions=True,
        )
    results = dict(zip([*good[:3], long_query, *good[3:]], outcomes))
    failure = results.pop(long_query)
    assert isinstance(failure, RequestFailed) and failure.status == 422
    assert results == {q: documents(corpus, q, 2) for q in good}
    # One request with all seven, refused; then each query on its own.
    assert [len(body["queries"]) for body in retriever.requests] == [7] + [1] * 7


async def test_a_topk_the_server_refuses_fails_the_whole_batch_in_one_request_with_its_message():
    # Sent again one query per request, each would be refused the same way: 1 + N requests for nothing.
    queries = [f"q{i}" for i in range(5)]
    async with FakeRetriever(corpus_of(queries), max_topk=2) as retriever:
        outcomes = await asyncio.gather(
            *(local_search(retriever.search_url, q, top_k=3, timeout=5, batch_wait=0.05) for q in queries), return_exceptions=True
        )
    for outcome in outcomes:
        assert isinstance(outcome, RequestFailed) and outcome.status == 422
        assert '"loc": ["topk"], "msg": "Input should be less than or equal to 2"' in str(outcome)  # the server's words
    assert [len(body["queries"]) for body in retriever.requests] == [5]


async def test_our_server_refusing_one_query_fails_it_alone_and_refusing_topk_fails_the_batch_once(dense_config, expected):
    config = replace(dense_config, max_topk=3)  # and --max_query_chars 100, the client's cap 4096
    with ready_server(config) as base:
        url, long_query = f"{base}/retrieve", "x" * 101
        sent = local_search_stats().http_requests
        outcomes = await asyncio.gather(
            *(local_search(url, q, top_k=2, timeout=10, batch_wait=0.05) for q in [QUERIES[0], long_query, QUERIES[1]]),
            return_exceptions=True,
        )
        assert [outcomes[0], outcomes[2]] == [passages(expected[q][0][:2]) for q in QUERIES[:2]]
        assert isinstance(outcomes[1], RequestFailed) and outcomes[1].status == 422
        assert "queries[0] has 101 characters; the limit is 100" in str(outcomes[1])  # sent alone
        assert local_search_stats().http_requests - sent == 1 + 3
        sent = local_search_stats().http_requests
        outcomes = await asyncio.gather(
            *(local_search(url, q, top_k=4, timeout=10, batch_wait=0.05) for q in QUERIES[:3]), return_exceptions=True
        )
        for outcome in outcomes:
            assert isinstance(outcome, RequestFailed) and "Input should be less than or equal to 3" in str(outcome)
        assert local_search_stats().http_requests - sent == 1


def passages(ids: list[str]) -> list[dict]:
    return [{"document": {"contents": DOCS[int(doc_id.removeprefix("doc"))]["contents"]}} for doc_id in ids]


async def test_a_request_too_large_is_sent_again_one_query_per_request_and_each_answered():
    queries = [f"question number {i} " + "x" * 60 for i in range(4)]
    corpus = corpus_of(queries)
    async with FakeRetriever(corpus, max_body_bytes=200) as retriever:  # one query fits, four do not
        results = await asyncio.gather(*(local_search(retriever.search_url, q, top_k=2, timeout=5, batch_wait=0.05) for q in queries))
    assert results == [documents(corpus, q, 2) for q in queries]
    assert [len(body["queries"]) for body in retriever.requests] == [4, 1, 1, 1, 1]


async def test_a_query_of_leading_spaces_past_max_query_chars_is_cut_after_them_not_sent_blank():
    query = " " * 40 + "who wrote hamlet" + " " * 40
    corpus = corpus_of(["who wrote hamlet"])
    async with FakeRetriever(corpus, max_query_chars=30) as retriever:
        assert await local_search(retriever.search_url, query, top_k=1, max_query_chars=30) == documents(corpus, "who wrote hamlet", 1)
    assert retriever.queries_received == ["who wrote hamlet"]


async def test_a_query_longer_than_max_query_chars_is_cut_and_answered():
    long_query = "x" * 30 + " and then a tail the server never sees"
    corpus = corpus_of([long_query[:30], "q"])
    async with FakeRetriever(corpus, max_query_chars=30) as retriever:
        results = await asyncio.gather(
            local_search(retriever.search_url, long_query, top_k=1, max_query_chars=30),
            local_search(retriever.search_url, "q", top_k=1, max_query_chars=30),
        )
    assert results == [documents(corpus, long_query[:30], 1), documents(corpus, "q", 1)]
    assert retriever.queries_received == [long_query[:30], "q"]


@pytest.mark.parametrize("blank", ["", "   ", "\t\n\u3000"])
async def test_a_blank_query_fails_at_once_without_being_sent_and_others_still_search(blank):
    corpus = corpus_of(["q1", "q2"])
    async with FakeRetriever(corpus) as retriever:
        outcomes = await asyncio.gather(
            *(local_search(retriever.search_url, q, top_k=1, batch_wait=0.05) for q in ["q1", blank, "q2"]),
            return_exceptions=True,
        )
    assert isinstance(outcomes[1], RequestFailed) and "empty or blank" in str(outcomes[1])
    assert outcomes[0::2] == [documents(corpus, "q1", 1), documents(corpus, "q2", 1)]
    assert retriever.queries_received == ["q1", "q2"]
