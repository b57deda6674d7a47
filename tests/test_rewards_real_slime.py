"""Each reward option inside REAL slime, at every revision in ../shared/slime/: a group of four
trajectories goes through slime's ``generate_and_rm_group`` (our generate and reward_func by their
flag values, SGLang, the retriever and the judge stood in for on loopback), each sample gets the
reward its option's formula gives, and slime's own rollout logging carries the terms to W&B as
``search_r1/reward/<term>``."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from generate_with_search import INVALID_ACTION_MESSAGE
from tests.fakes.chat_judge import FakeJudge
from tests.fakes.sglang import FakeSGLangGroup, Turn
from tests.real_slime import REVISIONS
from tests.test_rollout_metrics_real_slime import LOGGING
from tests.test_rollout_metrics_real_slime import slime_args as log_args
from tests.test_slime_modes import ANSWER_TURN, HAMLET_OBS, SEARCH_TURN, rollout, slime_args

WRONG_TURN = "<think> Not him. </think>\n<answer> Marlowe </answer>"
BROKEN_TURN = "Easy. <answer> Shakespeare </answer>"
UNSURE_TURN = "<think> I am not sure. </think>"
# The gold answer is "William Shakespeare" (World.sample). Each trajectory, what it is:
SCRIPTS = {
    # A: valid format, right answer, 1 search whose passages hold the gold answer.
    SEARCH_TURN + HAMLET_OBS + ANSWER_TURN: [Turn(SEARCH_TURN), Turn(ANSWER_TURN)],
    # B: valid format, wrong answer, 1 search, gold answer retrieved.
    SEARCH_TURN + HAMLET_OBS + WRONG_TURN: [Turn(SEARCH_TURN), Turn(WRONG_TURN)],
    # C: broken format, "Shakespeare": EM 0, cover EM 0, F1 2/3 (P 1, R 1/2), right for the judge.
    BROKEN_TURN: [Turn(BROKEN_TURN)],
    # D: an invalid action (broken format), then the right answer; no search.
    UNSURE_TURN + INVALID_ACTION_MESSAGE + ANSWER_TURN: [Turn(UNSURE_TURN, eos=True), Turn(ANSWER_TURN)],
}
RAMBLE = "<think> " + "hmm " * 1000  # cut by the response budget: no answer
# Search-R1++'s action-level penalties need every pair of (searched, answered): its own group.
ACTION_SCRIPTS = {
    # A: searched and answered, right.
    SEARCH_TURN + HAMLET_OBS + ANSWER_TURN: [Turn(SEARCH_TURN), Turn(ANSWER_TURN)],
    # C: answered without a search (broken format), F1 2/3.
    BROKEN_TURN: [Turn(BROKEN_TURN)],
    # E: searched, then rambled until the budget ran out: no answer.
    SEARCH_TURN + HAMLET_OBS + "<think> hmm": [Turn(SEARCH_TURN), Turn(RAMBLE)],
    # F: no search and no answer.
    "<think> hmm hmm": [Turn(RAMBLE)],
}
# Option -> the rewards of A, B, C, D (of E, F for Search-R1++) by its formula (docs/rewards.md).
OPTIONS = {
    # Today's default, Search-R1's case analysis with format_score 0.2: right 1, right in a broken
    # format 1 - 0.2, wrong in a valid format 0.2, wrong in a broken format 0.
    "em": ({}, [1.0, 0.2, 0.0, 0.8]),
    # Search-R1 v0.3's terms: + retrieval_score 0.1 for B, final_format_score 0.1 for C.
    "search_r1_v0.3": ({"final_format_score": 0.1, "retrieval_score": 0.1}, [1.0, 0.3, 0.1, 0.8]),
    "subem": ({"reward": "subem"}, [1.0, 0.2, 0.0, 0.8]),
    "f1": ({"reward": "f1", "format_score": 0}, [1.0, 0.0, 2 / 3, 1.0]),
    # ASearcher: F1 x valid format.
    "asearcher_f1_x_format": ({"reward": "f1", "format_score": 0, "format_gate": True}, [1.0, 0.0, 0.0, 0.0]),
    # R1-Searcher: F1, 2 less in a broken format.
    "r1_searcher": ({"reward": "f1", "format_score": 0, "format_penalty": 2}, [1.0, 0.0, 2 / 3 - 2, 1.0 - 2]),
    # 0.1 per search (A, B), 0.05 per invalid action (D).
    "action_penalties": ({"search_penalty": 0.1, "invalid_action_penalty": 0.05}, [0.9, 0.1, 0.0, 0.75]),
    # The judge knows "Shakespeare" is the gold answer: C is right in a broken format, 1 - 0.2.
    "judge": ({"reward": "judge"}, [1.0, 0.2, 0.8, 0.8]),
    # Search-R1++'s F1+ on A, C, E, F: F1, 0.1 less without a search, 0.1 less without an answer.
    "search_r1_pp": ({"reward": "f1", "format_score": 0, "no_search_penalty": 0.1, "no_answer_penalty": 0.1},
                     [1.0, 2 / 3 - 0.1, -0.1, -0.2]),
}
SCRIPTS_OF = {"search_r1_pp": ACTION_SCRIPTS}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
async def test_a_group_gets_each_options_rewards_and_slimes_log_carries_the_terms(world, slime, option):
    from slime.utils.types import Sample

    settings, expected = OPTIONS[option]
    scripts = SCRIPTS_OF.get(option, SCRIPTS)
    await world.serve([])
    group = await FakeSGLangGroup(world.tokenizer, world.prompt_ids, list(scripts.values())).__aenter__()
    judge = await FakeJudge({"William Shakespeare": ["shakespeare"]}).__aenter__()
    try:
        if option == "judge":
            settings = {**settings, "judge": {"url": judge.endpoint, "batch_wait": 0.01}}
        args = slime_args(world, search_r1=settings, sglang_router_port=group.port, n_samples_per_prompt=4)
        samples = await rollout(args, [world.sample(Sample) for _ in scripts])
    finally:
        await group.__aexit__(None, None, None)
        await judge.__aexit__(None, None, None)

    # Each script's sample: its response is the script's key (the start of it, for one cut short).
    in_order = [next(s for s in samples if s.response.startswith(key)) for key in scripts]
    assert len({id(sample) for sample in in_order}) == len(samples) == 4
    rewards = [sample.reward for sample in in_order]
    assert rewards == pytest.approx(expected)
    terms = [sample.metadata["search_r1_reward"] for sample in in_order]
    assert [t["total"] for t in terms] == pytest.approx(expected)
    if scripts is SCRIPTS:
        assert [t["format_valid"] for t in terms] == [1.0, 1.0, 0.0, 0.0]
        assert [t["retrieval_hit"] for t in terms] == [1.0, 1.0, 0.0, 0.0]
    else:
        assert [(t["no_search_penalty"], t["no_answer_penalty"]) for t in terms] == [
            (0.0, 0.0), (-0.1, 0.0), (0.0, -0.1), (-0.1, -0.1)]
    if option == "judge":
        assert [t["judge_unjudged"] for t in terms] == [0.0] * 4 and judge.requests

    # slime's own rollout logging runs our hook, which logs every term's mean over the group.
    module_name, log_rollout, _ = LOGGING[slime]
    import importlib

    for i, sample in enumerate(samples):
        sample.group_index, sample.index = 0, i
    logged = sys.modules["wandb"].logged
    logged.clear()
    getattr(importlib.import_module(module_name), log_rollout)(3, log_args(), samples, None, 1.0)
    ours = next(entry for entry in logged if "search_r1/reward/total" in entry)
    assert ours["rollout/step"] == 3
    for name in terms[0]:
        assert ours[f"search_r1/reward/{name}"] == pytest.approx(np.mean([t[name] for t in terms])), name
    assert ours["search_r1/reward/total"] == pytest.approx(np.mean(expected))
    if option == "search_r1_pp":  # half the group answered (docs/rewards.md: the penalty tracks answer_ratio)
        assert ours["search_r1/answer_ratio"] == 0.5
        assert ours["search_r1/reward/no_answer_penalty"] == pytest.approx(-0.1 * (1 - ours["search_r1/answer_ratio"]))
