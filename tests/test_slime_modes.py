"""Our hooks inside REAL slime's rollout, one mode at a time, at every archived revision where the
mode exists (tests/real_slime.py): slime's ``generate_and_rm_group`` calls ``generate`` and
``reward_func`` by their flag values, with SGLang and the retriever stood in for on loopback.

Which revision has what (read in slime's source, ``slime/rollout/sglang_rollout.py`` and
``slime/utils/types.py``): routed-expert replay in all three (decoded by slime's own generate in
2026-01/2026-04, by ``Sample.append_response_tokens`` in 2026-08); session routing from 2026-04;
top-p replay and the fully async rollout in 2026-08 only.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from generate_with_search import INFORMATION_HEAD, INFORMATION_TAIL
from tests.fakes.sglang import FakeSGLang, Turn
from tests.real_slime import REVISIONS

SEARCH_TURN = "<think> I need the author. </think>\n<search> who wrote hamlet </search>"
SEARCH_AGAIN = "<think> Let me check. </think>\n<search> hamlet author </search>"
ANSWER_TURN = "<think> The documents say Shakespeare. </think>\n<answer> William Shakespeare </answer>"
HAMLET_OBS = (
    INFORMATION_HEAD
    + 'Doc 1(Title: "Hamlet") Hamlet is a tragedy written by William Shakespeare.\n'
    'Doc 2(Title: "William Shakespeare") William Shakespeare was an English playwright.\n'
    'Doc 3(Title: "Elsinore") Elsinore is the setting of Hamlet.'
    + INFORMATION_TAIL
)
WITH_SESSIONS = ("2026-04-30", "2026-08-21")
WITH_TOP_P_REPLAY = ("2026-08-21",)


def slime_args(world, **overrides):
    """slime's parsed arguments for a rollout with our hooks (its defaults where we do not care)."""
    args = world.args()
    values = dict(
        custom_generate_function_path="generate_with_search.generate",
        custom_rm_path="generate_with_search.reward_func",
        group_rm=False, partial_rollout=False, mask_offpolicy_in_partial_rollout=False,
        sglang_server_concurrency=4, rollout_num_gpus=1, rollout_num_gpus_per_engine=1, sglang_dp_size=None,
        rollout_temperature=1.0, rollout_top_p=1.0, rollout_top_k=-1, rollout_max_response_len=400,
        rollout_stop=None, rollout_stop_token_ids=None, rollout_skip_special_tokens=True, rollout_seed=42,
        n_samples_per_prompt=1, use_rollout_routing_replay=False, ci_test=False, rm_type=None, reward_key=None,
    )
    vars(args).update({**values, **overrides})
    return args


async def rollout(args, samples, evaluation=False):
    """One group through slime's ``generate_and_rm_group``, with the sampling params slime builds."""
    from slime.rollout.sglang_rollout import GenerateState, generate_and_rm_group

    return await generate_and_rm_group(args, samples, GenerateState(args).sampling_params.copy(), evaluation=evaluation)


def train_data(args, samples) -> dict:
    """slime's own conversion of samples to training data, with every check it makes on them."""
    from slime.ray.rollout import RolloutManager

    manager = object.__new__(RolloutManager)  # no Ray actor: only the conversion's state
    manager.args = args
    manager.custom_convert_samples_to_train_data_func = manager.custom_reward_post_process_func = None
    return manager._convert_samples_to_train_data(samples)


def train_args(world, **overrides):
    return slime_args(
        world, advantage_estimator="grpo", rewards_normalization=False, grpo_std_normalization=False,
        rollout_batch_size=1, **overrides,
    )


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
async def test_slime_runs_a_search_trajectory_through_our_generate_and_reward(world, slime):
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
    args = slime_args(world)

    (sample,) = await rollout(args, [world.sample(Sample)])

    p, t1, obs, t2 = world.prompt_ids, world.ids(SEARCH_TURN), world.ids(HAMLET_OBS), world.ids(ANSWER_TURN)
    assert sample.tokens == p + t1 + obs + t2
    assert sample.response == SEARCH_TURN + HAMLET_OBS + ANSWER_TURN
    assert sample.loss_mask == [1] * len(t1) + [0] * len(obs) + [1] * len(t2)
    assert sample.status == Sample.Status.COMPLETED
    assert sample.reward == 1.0
    assert world.sglang.script_done
    data = train_data(train_args(world), [sample])
    assert data["tokens"] == [sample.tokens] and data["loss_masks"] == [sample.loss_mask] and data["raw_reward"] == [1.0]


# ---------------------------------------------------------------------------- session routing


@pytest.mark.parametrize("slime", WITH_SESSIONS, indirect=True)
async def test_every_turn_carries_the_session_key_with_consistent_hashing(world, slime):
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN), Turn(SEARCH_AGAIN), Turn(ANSWER_TURN)])
    args = slime_args(world, router_policy="consistent_hashing")

    (sample,) = await rollout(args, [world.sample(Sample)])

    assert uuid.UUID(sample.session_id)  # slime named the sample
    assert world.sglang.routing_keys == [sample.session_id] * 3
    assert sample.reward == 1.0


@pytest.mark.parametrize("slime", WITH_SESSIONS, indirect=True)
@pytest.mark.parametrize("policy", [None, "cache_aware", "round_robin"])
async def test_no_session_key_without_consistent_hashing(world, slime, policy):
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
    args = slime_args(world, router_policy=policy)

    (sample,) = await rollout(args, [world.sample(Sample)])

    assert world.sglang.routing_keys == [None, None]
    assert sample.reward == 1.0


@pytest.mark.parametrize("slime", ["2026-01-13"], indirect=True)
async def test_consistent_hashing_on_a_slime_without_sessions_is_a_clear_error(world, slime):
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN)])
    args = slime_args(world, router_policy="consistent_hashing")

    with pytest.raises(ValueError, match=r"consistent_hashing needs slime's session ids \(Sample.session_id, slime 2026-04"):
        await rollout(args, [world.sample(Sample)])
    assert world.sglang.requests == []


# ---------------------------------------------------------------------------- routed-expert replay


def replay_args(world, **overrides):
    return train_args(
        world, use_rollout_routing_replay=True, use_routing_replay=True,
        num_layers=FakeSGLang.NUM_LAYERS, moe_router_topk=FakeSGLang.TOPK, **overrides,
    )


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
async def test_routed_experts_have_one_row_per_token_after_several_turns(world, slime):
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN), Turn(SEARCH_AGAIN), Turn(ANSWER_TURN)])
    args = replay_args(world)

    (sample,) = await rollout(args, [world.sample(Sample)])

    assert all(request["return_routed_experts"] is True for request in world.sglang.requests)
    assert len(world.sglang.requests) == 3 and sample.reward == 1.0
    # The last turn's prefill routed every observation; every row is the engine's.
    rows = len(sample.tokens) - 1
    assert np.asarray(sample.rollout_routed_experts).tolist() == FakeSGLang.experts(range(rows))
    # slime's own conversion (and, in 2026-08, its replay validation) accepts it.
    (experts,) = train_data(args, [sample])["rollout_routed_experts"]
    assert tuple(np.asarray(experts).shape) == (rows, FakeSGLang.NUM_LAYERS, FakeSGLang.TOPK)


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
async def test_routed_experts_cover_an_observation_the_trajectory_ends_on(world, slime):
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN)])
    t1 = world.ids(SEARCH_TURN)
    # The budget ends inside the observation: it is cut to fit and the trajectory ends TRUNCATED on it.
    args = replay_args(world, rollout_max_response_len=len(t1) + 30)

    (sample,) = await rollout(args, [world.sample(Sample)])

    assert sample.status == Sample.Status.TRUNCATED
    assert sample.loss_mask == [1] * len(t1) + [0] * 30
    routed = len(world.prompt_ids) + len(t1) - 1  # what the engine routed: the prompt and the turn
    experts = np.asarray(sample.rollout_routed_experts).tolist()
    assert len(experts) == len(sample.tokens) - 1
    assert experts[:routed] == FakeSGLang.experts(range(routed))
    # The turn's last token and the observation but its last token: 30 rows, the last routed one repeated.
    assert experts[routed:] == [experts[routed - 1]] * 30
    train_data(args, [sample])


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
async def test_no_routed_experts_requested_without_replay(world, slime):
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])

    (sample,) = await rollout(slime_args(world), [world.sample(Sample)])

    assert not any("return_routed_experts" in request for request in world.sglang.requests)
    assert sample.rollout_routed_experts is None


# ---------------------------------------------------------------------------- top-p replay


@pytest.mark.parametrize("slime", WITH_TOP_P_REPLAY, indirect=True)
async def test_top_p_spans_are_empty_on_observations_and_one_per_response_token(world, slime):
    from slime.utils.types import Sample

    await world.serve([Turn(SEARCH_TURN), Turn(SEARCH_AGAIN), Turn(ANSWER_TURN)])
    args = train_args(world, rollout_top_p=0.9)

    (sample,) = await rollout(args, [world.sample(Sample)])

    assert all(r["sampling_params"]["custom_params"] == {"return_top_p_token_ids": True} for r in world.sglang.requests)
    offsets = np.asarray(sample.rollout_top_p_token_offsets).tolist()
    assert len(offsets) == sample.response_length + 1
    spans = [offsets[i + 1] - offsets[i] for i in range(sample.response_length)]
    assert spans == [2 if trained else 0 for trained in sample.loss_mask]
    kept = np.asarray(sample.rollout_top_p_token_ids).tolist()
    model_tokens = [t for t, m in zip(sample.tokens[len(world.prompt_ids):], sample.loss_mask) if m]
    assert kept == [i for t in model_tokens for i in (t, FakeSGLang.TOP_P_ALT)]
    # slime's own check before training: offsets one per response token plus one.
    data = train_data(args, [sample])
    assert np.asarray(data["rollout_top_p_token_offsets"][0]).tolist() == offsets
