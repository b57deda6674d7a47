"""Deep-research mode inside REAL slime at every archived revision (tests/real_slime.py): the page
tool against loopback serper.dev and web-page stand-ins, the long-horizon budgets over a 40-turn
trajectory, and the page cache under a GRPO group of 8."""

from __future__ import annotations

import numpy as np
import pytest

from generate_with_search import INFORMATION_HEAD, INFORMATION_TAIL
from search_r1_slime.page_tool import FINAL_TURN_NOTICE
from tests.fakes.pages import Page, PageServer
from tests.fakes.real_pages import NEWS, WIKI
from tests.fakes.serper import FakeSerper, organic
from tests.fakes.sglang import FakeSGLang, FakeSGLangGroup, Turn
from tests.real_slime import REVISIONS
from tests.test_slime_modes import ANSWER_TURN, HAMLET_OBS, SEARCH_TURN, replay_args, rollout, slime_args, train_data

KEY = "sk-test-deep-research"
BRIDGE_SNIPPET = "The city council voted seven to two on Tuesday evening to approve the bridge"
LAKE_SNIPPET = "Kestrel Lake is a glacial lake in the northern highlands of Varnia"
SEARCH = "<think> I need the bridge vote. </think>\n<search> alder bridge cost </search>"
ANSWER = "<think> The article gives the cost. </think>\n<answer> 410 million dollars </answer>"


def access(url: str, note: str = "Open it.") -> str:
    return f"<think> {note} </think>\n<access> {url} </access>"


class Web:
    """serper.dev and two web pages on loopback; search results link to the pages."""

    async def __aenter__(self):
        self.pages = await PageServer({
            "/news": Page(NEWS.html.encode("utf-8"), content_type="text/html; charset=utf-8"),
            "/lake": Page(b"", status=302, location="/wiki/kestrel"),  # a redirect, followed
            "/wiki/kestrel": Page(WIKI.html.encode("utf-8"), content_type="text/html; charset=utf-8"),
        }).__aenter__()
        self.news, self.lake = self.pages.url("/news"), self.pages.url("/lake")
        results = {"alder bridge cost": [organic("Bridge vote", self.news, BRIDGE_SNIPPET), organic("Kestrel Lake", self.lake, LAKE_SNIPPET)]}
        self.serper = await FakeSerper(results, api_key=KEY).__aenter__()
        return self

    async def __aexit__(self, *exc):
        await self.serper.__aexit__(*exc)
        await self.pages.__aexit__(*exc)

    def settings(self, **overrides) -> dict:
        return {
            "search_backend": "google",
            "google": {"api_key": KEY, "endpoint": self.serper.endpoint, "max_attempts": 2, "attempt_timeout": 1.0},
            # The pages are on loopback, which only allow_private_pages lets through.
            "access": {"enabled": True, "allow_private_pages": True},
            "max_turns": 8,
            **overrides,
        }

    def search_obs(self) -> str:
        return (
            INFORMATION_HEAD
            + f'Doc 1(Title: "Bridge vote") URL: {self.news}\n{BRIDGE_SNIPPET}\n'
            + f'Doc 2(Title: "Kestrel Lake") URL: {self.lake}\n{LAKE_SNIPPET}'
            + INFORMATION_TAIL
        )


def page_obs(page) -> str:
    return INFORMATION_HEAD + extracted(page) + INFORMATION_TAIL


def extracted(page) -> str:
    # The hand-marked main text, as trafilatura gives it for these pages (tests/test_page_extraction.py);
    # the encyclopedia page keeps its infobox, contents box and references.
    from search_r1_slime.page_tool import extract_main_text

    return extract_main_text(page.html.encode("utf-8"), "utf-8")


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
async def test_a_trajectory_searches_opens_two_pages_and_answers(world, slime):
    from slime.utils.types import Sample

    assert "\n".join(NEWS.main) == extracted(NEWS)  # the article page reads as exactly its marked text
    async with Web() as web:
        turns = [SEARCH, access(web.news), access(web.lake, "And the lake."), ANSWER]
        await world.serve([Turn(text) for text in turns])
        args = slime_args(world, search_r1=web.settings(), rollout_max_response_len=4000)

        (sample,) = await rollout(args, [world.sample(Sample, answers=("410 million dollars",))])

        observations = [web.search_obs(), page_obs(NEWS), page_obs(WIKI)]
        assert sample.response == turns[0] + observations[0] + turns[1] + observations[1] + turns[2] + observations[2] + turns[3]
        ids = [world.ids(text) for text in turns]
        obs = [world.ids(text) for text in observations]
        assert sample.tokens == world.prompt_ids + ids[0] + obs[0] + ids[1] + obs[1] + ids[2] + obs[2] + ids[3]
        assert sample.loss_mask == [m for t, o in zip(ids, obs + [[]]) for m in [1] * len(t) + [0] * len(o)]
        start = len(world.prompt_ids)
        assert sample.rollout_log_probs == [
            FakeSGLang.logprob(start + i) if trained else 0.0 for i, trained in enumerate(sample.loss_mask)
        ]
        assert world.sglang.requests[0]["sampling_params"]["stop"] == ["</search>", "</answer>", "</access>"]
        assert sample.status == Sample.Status.COMPLETED and sample.reward == 1.0
        trace = sample.metadata["search_r1"]
        assert (trace["searches"], trace["accesses"], trace["tool_calls"], trace["access_fetches"]) == (1, 2, 3, 2)
        assert sum(trace["access_failures"].values()) == 0 and trace["final_turn"] is None
        assert web.pages.fetched == {"/news": 1, "/lake": 1, "/wiki/kestrel": 1}
        data = train_data(slime_args(world, advantage_estimator="grpo", rewards_normalization=False, rollout_batch_size=1), [sample])
        assert data["loss_masks"] == [sample.loss_mask]


# ---------------------------------------------------------------------------- long horizons

ROUNDS = 39  # tool rounds before the final answer turn: a 40-turn trajectory
# The last tool round's observation: the notice inside the <information> block, before its end.
LAST_OBS = HAMLET_OBS.replace(INFORMATION_TAIL, FINAL_TURN_NOTICE + INFORMATION_TAIL)


def budget_settings(world, kind: str) -> tuple[dict, dict]:
    """Settings under which the budget ``kind`` makes the 39th round the last tool round, and
    slime's overrides: derived from the token counts of the scripted turns, off by one nowhere."""
    round_tokens = len(world.ids(SEARCH_TURN)) + len(world.ids(HAMLET_OBS))
    reserve, largest = 100, 500  # largest: max_obs_tokens, the only observation cap (no page tool)
    # After the model's 39th search turn, exactly `largest` tokens are left above the reserve.
    response_budget = (ROUNDS - 1) * round_tokens + len(world.ids(SEARCH_TURN)) + reserve + largest
    common = {"max_turns": 64}
    if kind == "tool_calls":
        return {**common, "max_tool_calls": ROUNDS}, {"rollout_max_response_len": 100_000}
    if kind == "response_tokens":
        return {**common, "answer_reserve_tokens": reserve}, {"rollout_max_response_len": response_budget}
    context = len(world.prompt_ids) + response_budget
    return {**common, "answer_reserve_tokens": reserve, "max_context_tokens": context}, {"rollout_max_response_len": 100_000}


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
@pytest.mark.parametrize("kind", ["tool_calls", "response_tokens", "context_tokens"])
async def test_budgets_end_a_40_turn_trajectory_on_an_answer(world, slime, kind):
    from slime.utils.types import Sample

    # The model would search for ever; it answers once told that the tools are spent.
    await world.serve([Turn(SEARCH_TURN)] * ROUNDS + [Turn(ANSWER_TURN)])
    search_r1, overrides = budget_settings(world, kind)
    args = slime_args(world, search_r1=search_r1, **overrides)

    (sample,) = await rollout(args, [world.sample(Sample)])

    assert sample.response == (SEARCH_TURN + HAMLET_OBS) * (ROUNDS - 1) + SEARCH_TURN + LAST_OBS + ANSWER_TURN
    t, obs, last, answer = (world.ids(x) for x in (SEARCH_TURN, HAMLET_OBS, LAST_OBS, ANSWER_TURN))
    assert sample.tokens == world.prompt_ids + (t + obs) * (ROUNDS - 1) + t + last + answer
    assert sample.loss_mask == ([1] * len(t) + [0] * len(obs)) * (ROUNDS - 1) + [1] * len(t) + [0] * len(last) + [1] * len(answer)
    start = len(world.prompt_ids)
    assert sample.rollout_log_probs == [FakeSGLang.logprob(start + i) if m else 0.0 for i, m in enumerate(sample.loss_mask)]
    assert sample.status == Sample.Status.COMPLETED and sample.reward == 1.0
    trace = sample.metadata["search_r1"]
    expected_reason = "tool_calls" if kind == "tool_calls" else "tokens"
    assert (trace["turns"], trace["tool_calls"], trace["actions"], trace["final_turn"]) == (ROUNDS, ROUNDS, ROUNDS + 1, expected_reason)
    assert world.sglang.script_done


@pytest.mark.parametrize("slime", ["2026-08-21"], indirect=True)
@pytest.mark.parametrize(("slack", "rounds"), [(0, ROUNDS - 1), (1, ROUNDS)])
async def test_the_token_budget_bound_is_exact(world, slime, slack, rounds):
    """With one round's tokens less, the 38th round is the last one; one token more and the 39th is.
    A model that searches in its final turn ends there without an answer, as after max_turns."""
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN)] * (ROUNDS + 1))
    search_r1, overrides = budget_settings(world, "response_tokens")
    overrides["rollout_max_response_len"] -= len(world.ids(SEARCH_TURN)) + len(world.ids(HAMLET_OBS)) - slack
    (sample,) = await rollout(slime_args(world, search_r1=search_r1, **overrides), [world.sample(Sample)])
    assert sample.response == (SEARCH_TURN + HAMLET_OBS) * (rounds - 1) + SEARCH_TURN + LAST_OBS + SEARCH_TURN
    assert sample.status == Sample.Status.COMPLETED and sample.reward == 0.0
    assert sample.metadata["search_r1"]["final_turn"] == "tokens"


# What the model reads after a search there is no room left to answer: the notice, in its block.
NOTICE_OBS = INFORMATION_HEAD + FINAL_TURN_NOTICE + INFORMATION_TAIL


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
@pytest.mark.parametrize("above", [0, 1, "frame", "frame + 1"])
async def test_a_search_with_no_room_above_the_reserve_is_not_run_and_the_notice_keeps_the_format(world, slime, above):
    """The model's own search turn leaves ``above`` tokens above the reserve. Up to the notice's
    block, no passage could be shown: the search is not sent, the block holds the notice (taken
    out of the reserve) and a right answer keeps its full reward. One token more and it runs."""
    from slime.utils.types import Sample

    frame = len(world.ids(INFORMATION_HEAD)) + len(world.ids(FINAL_TURN_NOTICE + INFORMATION_TAIL))
    tokens = {0: 0, 1: 1, "frame": frame, "frame + 1": frame + 1}[above]
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
    reserve = frame + len(world.ids(ANSWER_TURN)) + 1  # an answer ending before the budget does: COMPLETED
    args = slime_args(world, search_r1={"answer_reserve_tokens": reserve},
                      rollout_max_response_len=len(world.ids(SEARCH_TURN)) + reserve + tokens)

    (sample,) = await rollout(args, [world.sample(Sample)])

    searched = above == "frame + 1"
    assert len(world.retriever.requests) == int(searched)
    assert sample.response.startswith(SEARCH_TURN + INFORMATION_HEAD) and sample.response.endswith(ANSWER_TURN)
    if not searched:
        assert sample.response == SEARCH_TURN + NOTICE_OBS + ANSWER_TURN
    assert sample.status == Sample.Status.COMPLETED and sample.reward == 1.0
    assert sample.metadata["search_r1"]["final_turn"] == "tokens"


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
async def test_a_40_turn_trajectory_keeps_routed_experts_and_top_p_spans_aligned(world, slime):
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN)] * ROUNDS + [Turn(ANSWER_TURN)])
    search_r1, overrides = budget_settings(world, "tool_calls")
    top_p = slime == "2026-08-21"  # top-p replay exists from this revision on (tests/test_slime_modes.py)
    args = replay_args(world, search_r1=search_r1, rollout_top_p=0.9 if top_p else 1.0, **overrides)

    (sample,) = await rollout(args, [world.sample(Sample)])

    assert sample.reward == 1.0 and len(world.sglang.requests) == ROUNDS + 1
    rows = len(sample.tokens) - 1
    assert np.asarray(sample.rollout_routed_experts).tolist() == FakeSGLang.experts(range(rows))
    if top_p:
        offsets = np.asarray(sample.rollout_top_p_token_offsets).tolist()
        assert [offsets[i + 1] - offsets[i] for i in range(sample.response_length)] == [2 if m else 0 for m in sample.loss_mask]
    data = train_data(args, [sample])
    assert tuple(np.asarray(data["rollout_routed_experts"][0]).shape) == (rows, FakeSGLang.NUM_LAYERS, FakeSGLang.TOPK)


# ---------------------------------------------------------------------------- the cache under a group


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
async def test_a_grpo_group_of_8_fetches_each_page_once(world, slime):
    from slime.utils.types import Sample

    async with Web() as web:
        await world.serve([])
        # Each sample thinks its own first thought, so the group's trajectories differ from the first turn.
        scripts = [
            [Turn(SEARCH.replace("I need", f"Sample {i} needs")), Turn(access(web.news)), Turn(access(web.lake)), Turn(ANSWER)]
            for i in range(8)
        ]
        group = await FakeSGLangGroup(world.tokenizer, world.prompt_ids, scripts).__aenter__()
        try:
            args = slime_args(
                world, search_r1=web.settings(), rollout_max_response_len=4000, sglang_router_port=group.port,
                n_samples_per_prompt=8, sglang_server_concurrency=8,
            )
            samples = await rollout(args, [world.sample(Sample, answers=("410 million dollars",)) for _ in range(8)])
        finally:
            await group.__aexit__(None, None, None)

        assert [s.reward for s in samples] == [1.0] * 8
        assert all(fake.script_done for fake in group.fakes)
        # Counted at the page server: one request per page (and the redirect) for the whole group.
        assert web.pages.fetched == {"/news": 1, "/lake": 1, "/wiki/kestrel": 1}
        assert len(web.serper.requests) == 1
        traces = [s.metadata["search_r1"] for s in samples]
        assert sum(t["access_fetches"] for t in traces) == 2 and sum(t["accesses"] for t in traces) == 16


@pytest.mark.parametrize("slime", ["2026-08-21"], indirect=True)
async def test_failed_page_reads_are_one_line_the_model_reads_and_are_counted(world, slime):
    from slime.utils.types import Sample

    async with Web() as web:
        unseen = web.pages.url("/secret")
        turns = [SEARCH, access(unseen, "Try a guess."), access(web.news), ANSWER]
        web.pages.pages["/news"] = Page(b"\x89PNG\r\n\x1a\n", content_type="image/png")  # the article is an image now
        await world.serve([Turn(text) for text in turns])
        args = slime_args(world, search_r1=web.settings(), rollout_max_response_len=4000)

        (sample,) = await rollout(args, [world.sample(Sample, answers=("410 million dollars",))])

        failures = [
            INFORMATION_HEAD + f"The page {unseen} could not be opened: only a URL shown in an earlier result can be opened." + INFORMATION_TAIL,
            INFORMATION_HEAD + f"The page {web.news} could not be opened: not a text page (image/png)." + INFORMATION_TAIL,
        ]
        observations = [web.search_obs(), *failures]
        assert sample.response == "".join(t + o for t, o in zip(turns, observations + [""]))
        ids, obs = [world.ids(t) for t in turns], [world.ids(o) for o in observations]
        assert sample.loss_mask == [m for t, o in zip(ids, obs + [[]]) for m in [1] * len(t) + [0] * len(o)]
        trace = sample.metadata["search_r1"]
        assert {k: v for k, v in trace["access_failures"].items() if v} == {"not_seen": 1, "not_text": 1}
        assert web.pages.fetched == {"/news": 1}  # the unseen URL was never requested
        assert sample.reward == 1.0  # a failed read keeps the format valid
