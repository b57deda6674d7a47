"""The LLM judge against a stand-in judge model on loopback (tests/fakes/chat_judge.py): batching,
caching, a judge that hangs, answers garbage or is overloaded, the event loop, and the key."""

from __future__ import annotations

import asyncio
import logging

import pytest

from search_r1_slime.http_client import close_shared_session
from search_r1_slime.judge import JudgeItem, Verdict, judge_answer, judge_answers, judge_stats, parse_verdicts, render_prompt
from search_r1_slime.settings import ConfigError
from tests.fakes.chat_judge import FakeJudge
from tests.fakes.secret import TOKEN, leaked

GOLD = ("John F. Kennedy",)
ALIASES = {"John F. Kennedy": ["jfk", "john kennedy"]}


@pytest.fixture(autouse=True)
async def session_cleanup(monkeypatch):
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    yield
    await close_shared_session()


def settings(judge: FakeJudge, **overrides) -> dict:
    # A long batch_wait: a batch leaves when it is full, so the request count does not depend on timing.
    return {"url": judge.endpoint, "batch_wait": 5.0, "max_items_per_request": 5, "timeout": 20.0, **overrides}


async def test_answers_of_a_group_share_requests_and_identical_ones_are_asked_once():
    answers = ["JFK", "Nixon", "john kennedy", "Lincoln", "Kennedy", "JFK", "Reagan", "Carter", "Ford", "Bush", "Nixon", "Obama"]
    async with FakeJudge(ALIASES) as judge:
        verdicts = await judge_answers([JudgeItem("who was president in 1962?", GOLD, a) for a in answers], settings(judge))
        assert [v.correct for v in verdicts] == [a.lower() in ("jfk", "john kennedy") for a in answers]
        # 12 answers, 10 distinct: two full requests of 5, each answer in exactly one of them.
        assert [len(judge.items(i)) for i in range(len(judge.requests))] == [5, 5]
        asked = [item for i in range(2) for item in judge.items(i)]
        assert sorted(a for _, _, a in asked) == sorted(set(answers))
        assert all(golds == list(GOLD) for _, golds, _ in asked)
        stats = judge_stats()
        assert (stats.sent, stats.in_flight_hits, stats.requests, stats.http_requests, stats.unjudged) == (10, 2, 2, 2, 0)

        # The same question, gold answers and answer again: from the cache, no request.
        again = await judge_answer("who was president in 1962?", list(GOLD), "JFK", settings(judge))
        assert again == Verdict(True) and len(judge.requests) == 2 and judge_stats().cache_hits == 1
        # A missing or blank answer is incorrect without asking.
        assert await judge_answer("q", GOLD, None, settings(judge)) == Verdict(False, "no answer")
        assert await judge_answer("q", GOLD, "  ", settings(judge)) == Verdict(False, "no answer")
        assert len(judge.requests) == 2


async def test_a_request_carries_the_prompt_and_chat_fields_the_api_defines():
    async with FakeJudge(ALIASES) as judge:
        await judge_answer("who was president in 1962?", GOLD, "JFK", settings(judge, model="qwen-judge", max_tokens=64, batch_wait=0.01))
        headers, body = judge.requests[0]
        item = JudgeItem("who was president in 1962?", GOLD, "JFK")
        assert body == {
            "model": "qwen-judge",
            "messages": [{"role": "user", "content": render_prompt([item])}],
            "temperature": 0,
            "max_tokens": 64,
        }
        assert "Authorization" not in headers
        assert "Question: who was president in 1962?\nGold answers: John F. Kennedy\nPredicted answer: JFK" in body["messages"][0]["content"]


async def test_a_judge_that_hangs_leaves_the_answer_unjudged_and_the_next_call_gets_a_verdict():
    async with FakeJudge(ALIASES) as judge:
        judge.faults.append("hang")
        verdict = await judge_answer("q", GOLD, "JFK", settings(judge, timeout=1.0, batch_wait=0.01, max_attempts=1))
        assert verdict.correct is None and "judge to" in verdict.reason and "TimeoutError" in verdict.reason
        assert judge_stats().unjudged == 1
        judge.release.set()
        # The failure was not cached: asked again, answered.
        assert await judge_answer("q", GOLD, "JFK", settings(judge, timeout=5.0, batch_wait=0.01)) == Verdict(True)
        assert len(judge.requests) == 2


async def test_429_then_503_then_an_answer_is_a_verdict():
    async with FakeJudge(ALIASES) as judge:
        judge.faults.extend([(429, "slow down", {"Retry-After": "0"}), (503, "loading", None)])
        verdict = await judge_answer("q", GOLD, "Nixon", settings(judge, batch_wait=0.01))
        assert verdict == Verdict(False)
        assert len(judge.requests) == 3 and judge_stats().http_requests == 3 and judge_stats().unjudged == 0


async def test_a_garbage_reply_for_a_batch_is_asked_again_one_answer_per_request():
    async with FakeJudge(ALIASES) as judge:
        judge.faults.append(("reply", "They all look fine to me."))
        answers = ["JFK", "Nixon", "john kennedy"]
        verdicts = await judge_answers([JudgeItem("q", GOLD, a) for a in answers], settings(judge, max_items_per_request=3))
        assert [v.correct for v in verdicts] == [True, False, True]
        assert [len(judge.items(i)) for i in range(len(judge.requests))] == [3, 1, 1, 1]


async def test_garbage_for_a_single_answer_is_unjudged_with_the_reason(caplog):
    async with FakeJudge(ALIASES) as judge:
        judge.faults.append(("reply", "1: probably"))
        verdict = await judge_answer("q", GOLD, "JFK", settings(judge, batch_wait=0.01))
        assert verdict.correct is None
        assert verdict.reason == "judge reply refused: not a verdict line: '1: probably'; reply began '1: probably'"
        assert judge_stats().unjudged == 1


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("1: correct\n2: incorrect", 2, [True, False]),
        ("<think>item 1 is JFK, 2: correct?</think>\n\n2: Incorrect\n1: CORRECT.\n", 2, [True, False]),
        ("1: correct", 2, "no verdict for item(s) [2]"),
        ("1: correct\n1: incorrect", 1, "item 1 is judged twice"),
        ("1: correct\n3: correct", 2, "item 3 is not among 1..2"),
        ("1: correct\nThe second one is wrong.", 1, "not a verdict line: 'The second one is wrong.'"),
        ("1: yes", 1, "not a verdict line: '1: yes'"),
        ("", 1, "no verdict for item(s) [1]"),
    ],
)
def test_the_verdict_parse_is_strict(text, n, expected):
    if isinstance(expected, list):
        assert parse_verdicts(text, n) == expected
    else:
        with pytest.raises(ValueError) as info:
            parse_verdicts(text, n)
        assert str(info.value) == expected


async def test_the_event_loop_runs_on_while_a_verdict_is_awaited():
    # The stand-in serves on this very loop: it can only take the request, and the other task can
    # only run, if waiting for the judge never blocks the loop.
    async with FakeJudge(ALIASES) as judge:
        judge.faults.append("hang")
        pending = asyncio.ensure_future(judge_answer("q", GOLD, "JFK", settings(judge, batch_wait=0.01)))
        await judge.received.wait()
        assert await asyncio.ensure_future(asyncio.sleep(0, result="ran")) == "ran"
        assert not pending.done()
        judge.release.set()
        # The hung attempt answers (its "hang" fault ends in a 200 with the verdict).
        assert (await pending).correct is True


async def test_the_key_is_sent_as_a_bearer_token_and_shown_nowhere(caplog, monkeypatch, tmp_path):
    caplog.set_level(logging.DEBUG)
    async with FakeJudge(ALIASES, api_key=TOKEN) as judge:
        key_file = tmp_path / "judge.key"
        key_file.write_text(TOKEN + "\n")
        assert await judge_answer("q", GOLD, "JFK", settings(judge, batch_wait=0.01, api_key_file=str(key_file))) == Verdict(True)
        assert judge.requests[0][0]["Authorization"] == f"Bearer {TOKEN}"
        # The environment works too; a server echoing the header in its errors gets it into no message.
        monkeypatch.setenv("JUDGE_API_KEY", TOKEN)
        judge.faults.extend([(503, "got Authorization: Bearer " + TOKEN, None), (401, '{"detail": "bad key Bearer ' + TOKEN + '"}', None)])
        verdict = await judge_answer("q2", GOLD, "JFK", settings(judge, batch_wait=0.01))
        assert verdict.correct is None and "HTTP 401" in verdict.reason and "JUDGE_API_KEY" in verdict.reason
        assert "<redacted>" in verdict.reason and "HTTP 503" in caplog.text
        for text in (verdict.reason, repr(verdict), caplog.text):
            assert not leaked(TOKEN, text)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match=r"search_r1\.judge\.max_items_per_request must be at least 1, got 0"):
        asyncio.run(judge_answers([JudgeItem("q", GOLD, "a")], {"url": "http://127.0.0.1:9/v1/chat/completions", "max_items_per_request": 0}))
    with pytest.raises(ValueError, match=r"the judge needs search_r1\.judge\.url"):
        asyncio.run(judge_answers([JudgeItem("q", GOLD, "a")], {}))
