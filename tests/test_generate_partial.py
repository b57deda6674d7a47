"""Aborts, partial rollouts and return_logprob off, on old and new slime."""

import pytest

from generate_with_search import generate
from tests.fakes.sample import SAMPLE_CLASSES, NewSample, OldSample
from tests.fakes.sglang import Turn
from tests.test_generate_turns import ANSWER_TURN, HAMLET_OBS, SEARCH_TURN, assert_consistent, model_log_probs


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
async def test_abort_keeps_what_was_generated_and_partial_rollout_continues_it(world, sample_cls):
    t1 = world.ids(SEARCH_TURN)
    # The abort lands in the middle of the search turn; the continuation finishes that turn.
    await world.serve([Turn(ids=t1, abort_after=5), Turn(ids=t1[5:]), Turn(ANSWER_TURN)])
    sample = world.sample(sample_cls)
    p = world.prompt_ids

    sample = await generate(world.args(partial_rollout=True), sample, world.sampling_params())

    assert sample.status == sample_cls.Status.ABORTED
    assert sample.tokens == p + t1[:5]
    assert sample.response == world.tokenizer.decode(t1[:5])
    assert sample.loss_mask == [1] * 5
    assert sample.rollout_log_probs == model_log_probs(len(p), 5)
    assert world.retriever.requests == []

    # slime's --mask-offpolicy-in-partial-rollout zeroes the earlier mask before calling again.
    sample.loss_mask = [0] * 5
    sample = await generate(world.args(partial_rollout=True), sample, world.sampling_params())

    obs, t2 = world.ids(HAMLET_OBS), world.ids(ANSWER_TURN)
    assert [r["input_ids"] for r in world.sglang.requests] == [p, p + t1[:5], p + t1 + obs]
    assert world.sglang.requests[1]["sampling_params"]["max_new_tokens"] == 200 - 5
    assert sample.tokens == p + t1 + obs + t2
    assert sample.response == SEARCH_TURN + HAMLET_OBS + ANSWER_TURN
    assert sample.loss_mask == [0] * 5 + [1] * (len(t1) - 5) + [0] * len(obs) + [1] * len(t2)
    assert sample.rollout_log_probs == model_log_probs(len(p), len(t1)) + [0.0] * len(obs) + model_log_probs(len(p + t1 + obs), len(t2))
    assert world.retriever.queries_received == ["who wrote hamlet"]
    metrics = dict(sample.metadata["search_r1"])
    assert len(metrics.pop("search_latencies")) == 1
    assert len(metrics.pop("search_slot_waits")) == 1
    assert metrics == {
        "turns": 1, "searches": 1, "search_failures": 0, "invalid_actions": 0, "obs_truncated": 0,
        "actions": 2, "valid_actions": 2, "answered": True, "search_no_results": 0,
        "empty_queries": 0, "search_slot_timeouts": 0,
        # The local client's counters on this event loop around the trajectory: one query sent.
        "client_stats_start": {"sent": 0, "cache_hits": 0, "in_flight_hits": 0, "batches": 0, "http_requests": 0},
        "client_stats_end": {"sent": 1, "cache_hits": 0, "in_flight_hits": 0, "batches": 1, "http_requests": 1},
    }
    assert sample.status == sample_cls.Status.COMPLETED


async def test_turn_counters_continue_across_an_abort(world):
    t2 = world.ids(SEARCH_TURN)
    await world.serve([Turn(SEARCH_TURN), Turn(ids=t2, abort_after=3), Turn(ids=t2[3:])])
    args = world.args(partial_rollout=True, max_turns=1)

    sample = await generate(args, world.sample(NewSample), world.sampling_params())
    assert sample.status == NewSample.Status.ABORTED
    assert sample.metadata["search_r1"]["turns"] == 1
    sample = await generate(args, sample, world.sampling_params())

    # The resumed turn is the final one: its search is not executed.
    assert world.retriever.queries_received == ["who wrote hamlet"]
    assert sample.response == SEARCH_TURN + HAMLET_OBS + SEARCH_TURN
    assert sample.status == NewSample.Status.COMPLETED


async def test_abort_before_any_token_leaves_an_empty_consistent_response(world):
    await world.serve([Turn(ANSWER_TURN, abort_after=0)])
    sample = await generate(world.args(), world.sample(OldSample), world.sampling_params())
    assert sample.status == OldSample.Status.ABORTED
    assert sample.tokens == world.prompt_ids
    assert (sample.response, sample.response_length, sample.loss_mask, sample.rollout_log_probs) == ("", 0, [], [])


async def test_without_partial_rollout_an_aborted_sample_starts_over(world):
    t1 = world.ids(SEARCH_TURN)
    await world.serve([Turn(ids=t1, abort_after=4), Turn(ANSWER_TURN)])
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params())
    assert sample.status == NewSample.Status.ABORTED

    world.sglang.expect_fresh_start(world.prompt_ids)
    sample = await generate(world.args(), sample, world.sampling_params())

    assert world.sglang.requests[1]["input_ids"] == world.prompt_ids
    assert sample.tokens == world.prompt_ids + world.ids(ANSWER_TURN)
    assert sample.response == ANSWER_TURN
    assert sample.loss_mask == [1] * len(world.ids(ANSWER_TURN))
    assert sample.status == NewSample.Status.COMPLETED


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
async def test_return_logprob_off_gives_no_log_probs_but_the_same_tokens(world, sample_cls):
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
    sample = await generate(world.args(return_logprob=False), world.sample(sample_cls), world.sampling_params())

    t1, obs, t2 = world.ids(SEARCH_TURN), world.ids(HAMLET_OBS), world.ids(ANSWER_TURN)
    assert all(r["return_logprob"] is True for r in world.sglang.requests)  # ids still come from SGLang
    assert sample.tokens == world.prompt_ids + t1 + obs + t2
    assert sample.loss_mask == [1] * len(t1) + [0] * len(obs) + [1] * len(t2)
    assert sample.rollout_log_probs is None
    assert sample.status == sample_cls.Status.COMPLETED


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
async def test_return_logprob_off_survives_an_abort_and_continuation(world, sample_cls):
    t1 = world.ids(SEARCH_TURN)
    await world.serve([Turn(ids=t1, abort_after=6), Turn(ids=t1[6:]), Turn(ANSWER_TURN)])
    args = world.args(partial_rollout=True, return_logprob=False)

    sample = await generate(args, world.sample(sample_cls), world.sampling_params())
    assert sample.rollout_log_probs is None
    sample = await generate(args, sample, world.sampling_params())

    assert sample.response == SEARCH_TURN + HAMLET_OBS + ANSWER_TURN
    assert sample.rollout_log_probs is None
    assert_consistent(sample, world.prompt_ids)
    assert sample.status == sample_cls.Status.COMPLETED


async def test_new_slime_records_the_weight_version_of_each_generation(world):
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params())
    assert sample.weight_versions == [world.sglang.weight_version] * 2


async def test_a_prompt_that_is_still_a_message_list_is_refused_with_the_fix(world):
    await world.serve([])
    sample = NewSample(prompt=[{"role": "user", "content": "who wrote hamlet?"}])
    with pytest.raises(TypeError, match="--apply-chat-template"):
        await generate(world.args(), sample, world.sampling_params())


async def test_pre_tokenised_prompt_ids_on_the_sample_are_used_as_they_are(world):
    # Like slime's own generate: ids already on the sample are the prompt.
    await world.serve([Turn(ANSWER_TURN)])
    sample = world.sample(OldSample)
    sample.tokens = list(world.prompt_ids)
    sample.prompt = "not what the ids say"
    sample = await generate(world.args(), sample, world.sampling_params())
    assert world.sglang.requests[0]["input_ids"] == world.prompt_ids
    assert sample.tokens == world.prompt_ids + world.ids(ANSWER_TURN)


@pytest.mark.parametrize("budget", [0, None, "200"])
async def test_a_missing_or_bad_budget_is_refused(world, budget):
    await world.serve([])
    with pytest.raises(ValueError, match=r"sampling_params\['max_new_tokens'\] must be a positive int"):
        await generate(world.args(), world.sample(NewSample), world.sampling_params(max_new_tokens=budget))


async def test_an_abort_on_the_closing_token_resumes_with_the_search_not_a_new_generation(world):
    t1 = world.ids(SEARCH_TURN)
    await world.serve([Turn(ids=t1, abort_after=len(t1)), Turn(ANSWER_TURN)])
    args = world.args(partial_rollout=True)

    sample = await generate(args, world.sample(NewSample), world.sampling_params())
    assert sample.status == NewSample.Status.ABORTED
    assert sample.tokens == world.prompt_ids + t1
    sample = await generate(args, sample, world.sampling_params())

    obs = world.ids(HAMLET_OBS)
    assert [r["input_ids"] for r in world.sglang.requests] == [world.prompt_ids, world.prompt_ids + t1 + obs]
    assert sample.response == SEARCH_TURN + HAMLET_OBS + ANSWER_TURN
    assert sample.status == NewSample.Status.COMPLETED
