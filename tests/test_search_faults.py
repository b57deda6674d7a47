"""Search under faults, on loopback: a retriever that restarts, stays down, loads, or wants a token.

The rollouts here are many concurrent trajectories through the real ``generate`` (one scripted
SGLang trajectory per prompt, each asking its own two queries), so a test sees exactly what the
model is shown. Searches are bounded by ``search_timeout`` (a few seconds here).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from types import SimpleNamespace

import pytest

import generate_with_search
from generate_with_search import INFORMATION_HEAD, INFORMATION_TAIL, SEARCH_FAILED_TEXT, generate, passages_to_string
from local_search_server import local_search, local_search_stats
from search_r1_slime.http_client import RequestFailed, close_shared_session
from tests.fakes.retriever import FakeRetriever, doc
from tests.fakes.sample import NewSample
from tests.fakes.sglang import FakeSGLangPerPrompt, Turn

TIMEOUT = 4.0
# The longest wait between two probes of a down server (RetryPolicy's default backoff cap), plus
# scheduling slack on a shared machine.
BACKOFF_STEP = 2.0 + 0.5
ANSWER = "<answer> done </answer>"


@pytest.fixture(autouse=True)
async def session_cleanup():
    yield
    await close_shared_session()


def query(sample: int, turn: int) -> str:
    return f"sample {sample:03d} question {turn}"


def search_turn(sample: int, turn: int) -> str:
    return f"<think> step {turn} </think>\n<search> {query(sample, turn)} </search>"


class Rollout:
    """``n`` trajectories, each: search, search, answer; every query has its own documents."""

    def __init__(self, tokenizer, tokenizer_dir: str, n: int):
        self.tokenizer, self.tokenizer_dir, self.n = tokenizer, tokenizer_dir, n
        self.prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": f"Task {i:03d}: answer with two searches."}], tokenize=False, add_generation_prompt=True
            )
            for i in range(n)
        ]
        self.corpus = {
            query(i, t): [doc(f"{i}-{t}-{k}", f"Title {i}/{t}/{k}", f"Passage {k} for sample {i} turn {t}.") for k in range(3)]
            for i in range(n)
            for t in (1, 2)
        }
        self.scripts = {
            prompt: [Turn(search_turn(i, 1)), Turn(search_turn(i, 2)), Turn(ANSWER)] for i, prompt in enumerate(self.prompts)
        }

    def observation(self, sample: int, turn: int) -> str:
        docs = [{"document": {"contents": d["contents"]}} for d in self.corpus[query(sample, turn)]]
        return INFORMATION_HEAD + passages_to_string(docs).strip() + INFORMATION_TAIL

    def expected_response(self, sample: int, shown: dict[int, str]) -> str:
        return search_turn(sample, 1) + shown[1] + search_turn(sample, 2) + shown[2] + ANSWER

    async def run(self, sglang_port: int, search_url: str, starts: list[float], **search_r1) -> list[NewSample]:
        args = SimpleNamespace(
            sglang_router_ip="127.0.0.1",
            sglang_router_port=sglang_port,
            hf_checkpoint=self.tokenizer_dir,
            rollout_max_response_len=600,
            partial_rollout=False,
            search_r1={"max_turns": 2, "search_timeout": TIMEOUT, "local": {"search_url": search_url}, **search_r1},
        )
        params = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 600, "stop": None, "no_stop_trim": True}

        async def one(i: int) -> NewSample:
            await asyncio.sleep(starts[i])
            sample = NewSample(prompt=self.prompts[i], label={"ground_truth": {"target": ["done"]}})
            return await generate(args, sample, dict(params))

        return await asyncio.gather(*(one(i) for i in range(self.n)))


@pytest.fixture
def timed_searches(monkeypatch):
    """(start, duration, failed) of every search the rollout runs."""
    records: list[tuple[float, float, bool]] = []
    real_search = generate_with_search.search

    async def timed(q, config):
        started = time.monotonic()
        try:
            result = await real_search(q, config)
        except RequestFailed:
            records.append((started, time.monotonic() - started, True))
            raise
        records.append((started, time.monotonic() - started, False))
        return result

    monkeypatch.setattr(generate_with_search, "search", timed)
    return records


async def test_a_retriever_restarted_mid_rollout_costs_no_search(tokenizer, tokenizer_dir, timed_searches):
    rollout = Rollout(tokenizer, tokenizer_dir, n=48)
    rng = random.Random(0)
    starts = [rng.uniform(0, 1.0) for _ in range(rollout.n)]
    async with FakeSGLangPerPrompt(tokenizer, rollout.scripts) as sglang, FakeRetriever(rollout.corpus) as retriever:

        async def restart() -> None:
            await asyncio.sleep(0.4)
            await retriever.stop()
            # Longer than main's five quick attempts lasted (about 2 s of jittered backoff).
            await asyncio.sleep(2.5)
            await retriever.start()

        samples, _ = await asyncio.gather(rollout.run(sglang.port, retriever.search_url, starts), restart())

    during_downtime = [r for r in timed_searches if 0.4 < r[0] - min(r[0] for r in timed_searches) < 2.9]
    assert len(during_downtime) >= 10, "the restart should have caught searches in flight"
    for i, sample in enumerate(samples):
        # Every search had time left, so every one succeeded, each with its own documents.
        shown = {1: rollout.observation(i, 1), 2: rollout.observation(i, 2)}
        assert sample.response == rollout.expected_response(i, shown), i
        assert sample.status == NewSample.Status.COMPLETED
        assert sample.metadata["search_r1"]["search_failures"] == 0
    assert len(timed_searches) == 2 * rollout.n and not any(failed for _, _, failed in timed_searches)
    # While it was down, the waiting searches probed it one at a time: the attempts that failed are
    # the requests in flight when it went down plus about one probe per backoff step, far fewer
    # than one retry schedule per waiting request.
    stats = local_search_stats()
    failed_attempts = stats.http_requests - len(retriever.requests)
    assert failed_attempts <= 12, (failed_attempts, stats)


async def test_a_retriever_down_past_the_deadline_fails_every_search_in_time(tokenizer, tokenizer_dir, timed_searches, caplog):
    caplog.set_level(logging.WARNING)
    rollout = Rollout(tokenizer, tokenizer_dir, n=16)
    starts = [i * 0.02 for i in range(rollout.n)]
    async with FakeSGLangPerPrompt(tokenizer, rollout.scripts) as sglang, FakeRetriever(rollout.corpus) as retriever:
        await retriever.stop()
        started = time.monotonic()
        samples = await asyncio.wait_for(rollout.run(sglang.port, retriever.search_url, starts, search_timeout=1.5), timeout=10)
        wall = time.monotonic() - started

    failed = INFORMATION_HEAD + SEARCH_FAILED_TEXT + INFORMATION_TAIL
    for i, sample in enumerate(samples):
        assert sample.response == rollout.expected_response(i, {1: failed, 2: failed})
        assert sample.status == NewSample.Status.COMPLETED
        assert sample.metadata["search_r1"]["search_failures"] == 2
    assert len(timed_searches) == 2 * rollout.n and all(failed for _, _, failed in timed_searches)
    assert max(duration for _, duration, _ in timed_searches) <= 1.5 + BACKOFF_STEP
    assert wall < 2 * (1.5 + BACKOFF_STEP) + 1
    # A dead server is probed, not hammered: one probe at a time, about one per backoff step, plus
    # each request's last try just before its deadline; not a retry schedule per request.
    stats = local_search_stats()
    assert stats.http_requests <= stats.batches + 10, stats
    assert "ClientConnectorError" in caplog.text


async def test_a_loading_server_answering_503_with_retry_after_is_waited_for():
    corpus = {f"q{i}": [doc(str(i), f"T{i}", f"text {i}")] for i in range(10)}
    async with FakeRetriever(corpus) as retriever:
        retriever.loading_until = time.monotonic() + 1.0
        retriever.retry_after = "0.2"
        started = time.monotonic()
        # One query per request, so ten requests would each run their own retry schedule.
        results = await asyncio.gather(
            *(local_search(retriever.search_url, q, top_k=1, timeout=TIMEOUT, max_queries_per_request=1) for q in corpus)
        )
        elapsed = time.monotonic() - started
    assert results == [[{"document": {"contents": corpus[q][0]["contents"]}}] for q in corpus]
    assert 1.0 <= elapsed < 1.0 + 0.2 + 0.5
    # The first ten went out together and got 503; after that one probe per Retry-After (0.2 s),
    # not ten: about 10 + 1.0 / 0.2 refusals instead of 10 x 5.
    assert len(retriever.refused) <= 10 + 6 + 2, len(retriever.refused)
    assert sorted(q for body in retriever.requests for q in body["queries"]) == sorted(corpus)


async def test_retry_after_longer_than_the_time_left_fails_at_once():
    async with FakeRetriever({"q": [doc("1", "T", "t")]}) as retriever:
        retriever.loading_until = time.monotonic() + 60
        retriever.retry_after = "30"
        started = time.monotonic()
        with pytest.raises(RequestFailed, match="HTTP 503.*loading"):
            await local_search(retriever.search_url, "q", top_k=1, timeout=TIMEOUT)
        assert time.monotonic() - started < 0.5
        assert len(retriever.refused) == 1


async def test_a_dead_server_is_skipped_and_picked_up_again_once_restarted():
    corpus = {f"q{i}": [doc(str(i), f"T{i}", f"text {i}")] for i in range(40)}
    async with FakeRetriever(corpus) as a, FakeRetriever(corpus) as b:
        await a.stop()
        for i in range(20):
            assert await local_search([a.search_url, b.search_url], f"q{i}", top_k=1, timeout=TIMEOUT) == [
                {"document": {"contents": corpus[f"q{i}"][0]["contents"]}}
            ]
        assert (len(a.requests), len(b.requests)) == (0, 20)
        await a.start()
        await asyncio.sleep(2.1)  # past the longest backoff: its next probe is due
        for i in range(20, 40):
            await local_search([a.search_url, b.search_url], f"q{i}", top_k=1, timeout=TIMEOUT)
        assert len(a.requests) >= 9  # back in the round robin


async def test_a_wrong_token_fails_at_once_with_a_clear_message_and_is_never_logged(caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("RETRIEVAL_API_KEY", raising=False)
    secret = "tok-0123456789abcdef"
    async with FakeRetriever({"q": [doc("1", "T", "t")]}, api_key="the-right-token-0") as retriever:
        for api_key in (secret, None):
            with pytest.raises(RequestFailed, match=r"HTTP 401.*set search_r1\.local\.api_key or export RETRIEVAL_API_KEY") as info:
                await local_search(retriever.search_url, "q", top_k=1, timeout=TIMEOUT, api_key=api_key)
            assert info.value.status == 401
        assert len(retriever.refused) == 2  # 401 is not retried
        assert secret not in str(info.value) and secret not in caplog.text


async def test_the_token_comes_from_the_config_or_the_environment(monkeypatch):
    corpus = {"q": [doc("1", "T", "t")], "r": [doc("2", "U", "u")]}
    async with FakeRetriever(corpus, api_key="the-right-token-0") as retriever:
        monkeypatch.delenv("RETRIEVAL_API_KEY", raising=False)
        assert await local_search(retriever.search_url, "q", top_k=1, api_key="the-right-token-0") == [
            {"document": {"contents": '"T"\nt'}}
        ]
        monkeypatch.setenv("RETRIEVAL_API_KEY", "the-right-token-0")
        assert await local_search(retriever.search_url, "r", top_k=1) == [{"document": {"contents": '"U"\nu'}}]
        assert retriever.refused == []
