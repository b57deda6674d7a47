"""Searches that queue for a ``search_concurrency`` slot: the wait is not part of ``search_timeout``,
it is bounded by ``search_slot_timeout``, and it is measured; the documentation (docs/configuration.md and its Chinese twin) says exactly that."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import generate_with_search
from generate_with_search import INFORMATION_HEAD, INFORMATION_TAIL, SEARCH_FAILED_TEXT, generate, passages_to_string
from search_r1_slime.http_client import close_shared_session
from search_r1_slime.rollout_metrics import rollout_metrics
from search_r1_slime.settings import DEFAULTS
from tests.fakes.retriever import FakeRetriever, doc
from tests.fakes.sample import NewSample
from tests.fakes.sglang import FakeSGLangPerPrompt, Turn

REPO = Path(__file__).resolve().parent.parent
ANSWER = "<answer> done </answer>"


@pytest.fixture(autouse=True)
async def session_cleanup():
    yield
    await close_shared_session()


class TwoTrajectories:
    """Trajectories "a" and "b", each: search its own query, then answer. "a"'s search is held at
    ``gate`` (after it took its slot) until the test opens it."""

    def __init__(self, tokenizer, tokenizer_dir, monkeypatch):
        self.tokenizer_dir = tokenizer_dir
        self.prompts = {
            name: tokenizer.apply_chat_template([{"role": "user", "content": f"Task {name}"}], tokenize=False, add_generation_prompt=True)
            for name in "ab"
        }
        self.corpus = {f"query {name}": [doc(name, f"Title {name}", f"Passage for {name}.")] for name in "ab"}
        self.scripts = {self.prompts[name]: [Turn(self.search_turn(name)), Turn(ANSWER)] for name in "ab"}
        self.gate = asyncio.Event()
        self.a_searching = asyncio.Event()
        self.searched: list[str] = []
        real_search = generate_with_search.search

        async def held(query, config):
            self.searched.append(query)
            if query == "query a":
                self.a_searching.set()
                await self.gate.wait()
            return await real_search(query, config)

        monkeypatch.setattr(generate_with_search, "search", held)

    @staticmethod
    def search_turn(name: str) -> str:
        return f"<think> {name} </think>\n<search> query {name} </search>"

    def response(self, name: str, body: str) -> str:
        return self.search_turn(name) + INFORMATION_HEAD + body + INFORMATION_TAIL + ANSWER

    def passages(self, name: str) -> str:
        return passages_to_string([{"document": {"contents": d["contents"]}} for d in self.corpus[f"query {name}"]]).strip()

    def run(self, name: str, sglang_port: int, search_url: str, **search_r1):
        args = SimpleNamespace(
            sglang_router_ip="127.0.0.1", sglang_router_port=sglang_port, hf_checkpoint=self.tokenizer_dir, partial_rollout=False,
            search_r1={"max_turns": 1, "search_concurrency": 1, "local": {"search_url": search_url}, **search_r1},
        )
        params = {"temperature": 1.0, "max_new_tokens": 300, "stop": None, "no_stop_trim": True}
        return generate(args, NewSample(prompt=self.prompts[name], label={"ground_truth": {"target": ["done"]}}), params)


async def test_a_search_that_gets_no_slot_within_search_slot_timeout_fails_unsent_and_is_counted(tokenizer, tokenizer_dir, monkeypatch):
    world = TwoTrajectories(tokenizer, tokenizer_dir, monkeypatch)
    async with FakeSGLangPerPrompt(tokenizer, world.scripts) as sglang, FakeRetriever(world.corpus) as retriever:
        settings = {"search_timeout": 5, "search_slot_timeout": 0.5}
        a = asyncio.ensure_future(world.run("a", sglang.port, retriever.search_url, **settings))
        await world.a_searching.wait()  # "a" holds the only slot
        # Opened once "b" is done; after 5 s at the latest, so that a slot wait without a bound
        # fails this test instead of hanging it.
        asyncio.get_running_loop().call_later(5, world.gate.set)
        b = await world.run("b", sglang.port, retriever.search_url, **settings)
        world.gate.set()
        a = await a

    assert b.response == world.response("b", SEARCH_FAILED_TEXT)
    metrics = b.metadata["search_r1"]
    assert (metrics["searches"], metrics["search_failures"], metrics["search_slot_timeouts"]) == (1, 1, 1)
    assert metrics["search_latencies"] == []  # it never ran
    [waited] = metrics["search_slot_waits"]
    assert 0.5 <= waited < 5
    assert world.searched == ["query a"]  # "b" never reached the backend
    assert a.response == world.response("a", world.passages("a"))
    assert a.metadata["search_r1"]["search_slot_timeouts"] == 0
    metrics = rollout_metrics([a, b])
    assert metrics["search_r1/slot_timeout_ratio"] == 0.5
    assert metrics["search_r1/search_slot_wait/p99"] >= 0.5 * 0.99


async def test_the_wait_for_a_slot_is_not_part_of_search_timeout(tokenizer, tokenizer_dir, monkeypatch):
    # "b" waits longer for the slot than its search_timeout, and still gets its passages.
    world = TwoTrajectories(tokenizer, tokenizer_dir, monkeypatch)
    async with FakeSGLangPerPrompt(tokenizer, world.scripts) as sglang, FakeRetriever(world.corpus) as retriever:
        settings = {"search_timeout": 1.0, "search_slot_timeout": 30}
        a = asyncio.ensure_future(world.run("a", sglang.port, retriever.search_url, **settings))
        await world.a_searching.wait()
        asyncio.get_running_loop().call_later(2.0, world.gate.set)
        b = await world.run("b", sglang.port, retriever.search_url, **settings)
        a = await a

    assert b.response == world.response("b", world.passages("b"))
    metrics = b.metadata["search_r1"]
    assert (metrics["search_failures"], metrics["search_slot_timeouts"]) == (0, 0)
    [waited] = metrics["search_slot_waits"]
    assert waited > settings["search_timeout"]
    assert a.response == world.response("a", world.passages("a"))


def _row(readme: str, key: str) -> str:
    [row] = [line for line in readme.splitlines() if line.startswith(f"| `{key}` |")]
    return row


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_documentation_states_what_bounds_a_search_and_its_slot_wait(language):
    readme = (REPO / "docs" / ("configuration.md" if language == "en" else "configuration_zh.md")).read_text(encoding="utf-8")
    timeout, slot_timeout = _row(readme, "search_timeout"), _row(readme, "search_slot_timeout")
    assert timeout.startswith(f"| `search_timeout` | `{DEFAULTS.search_timeout:g}` |")
    assert slot_timeout.startswith(f"| `search_slot_timeout` | `{DEFAULTS.search_slot_timeout:g}` |")
    # search_timeout's row says the slot wait is outside it and bounded by search_slot_timeout.
    assert "`search_concurrency`" in timeout and "`search_slot_timeout`" in timeout
    assert re.search(r"not (part of|included)|不计入|不包括|不含", timeout), timeout
    assert "`search_slot_timeout`" in _row(readme, "search_concurrency")
