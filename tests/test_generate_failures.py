"""Failing dependencies: a search that fails becomes an honest observation; SGLang errors are
retried when a retry can help and end the sample honestly when it cannot."""

import pytest

from generate_with_search import INFORMATION_HEAD, INFORMATION_TAIL, SEARCH_FAILED_TEXT, generate
from search_r1_slime.http_client import RequestFailed
from tests.fakes.sample import SAMPLE_CLASSES, NewSample, OldSample
from tests.fakes.sglang import Turn
from tests.test_generate_turns import ANSWER_TURN, HAMLET_OBS, SEARCH_TURN, assert_consistent

FAILED_OBS = INFORMATION_HEAD + SEARCH_FAILED_TEXT + INFORMATION_TAIL


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
async def test_failed_search_is_shown_to_the_model_and_counted(world, sample_cls):
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)], corpus={})  # every retrieve answers 500
    sample = await generate(world.args(search_timeout=0.5), world.sample(sample_cls), world.sampling_params())

    t1, obs, t2 = world.ids(SEARCH_TURN), world.ids(FAILED_OBS), world.ids(ANSWER_TURN)
    assert sample.response == SEARCH_TURN + FAILED_OBS + ANSWER_TURN
    assert sample.tokens[len(world.prompt_ids) :] == t1 + obs + t2
    assert sample.loss_mask == [1] * len(t1) + [0] * len(obs) + [1] * len(t2)
    assert sample.metadata["search_r1"]["search_failures"] == 1
    assert sample.metadata["search_r1"]["searches"] == 1
    assert sample.status == sample_cls.Status.COMPLETED


async def test_transient_search_error_is_retried_and_the_documents_arrive(world):
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
    world.retriever.failures.extend([503, "drop"])
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params())
    assert sample.response == SEARCH_TURN + HAMLET_OBS + ANSWER_TURN
    assert sample.metadata["search_r1"]["search_failures"] == 0


async def test_search_that_hangs_gives_up_within_search_timeout(world):
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
    world.retriever.hang_s = 1
    world.retriever.failures.extend(["hang"] * 5)
    sample = await generate(world.args(search_timeout=0.5), world.sample(NewSample), world.sampling_params())
    assert sample.response == SEARCH_TURN + FAILED_OBS + ANSWER_TURN
    assert sample.metadata["search_r1"]["search_failures"] == 1


async def test_backend_that_finds_nothing_says_so(world):
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)], corpus={"who wrote hamlet": []})
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params())
    assert sample.response == SEARCH_TURN + INFORMATION_HEAD + "No documents were found for this query." + INFORMATION_TAIL + ANSWER_TURN
    assert sample.metadata["search_r1"]["search_failures"] == 0


async def test_sglang_5xx_is_retried_with_the_same_request(world):
    await world.serve([Turn(ANSWER_TURN)])
    world.sglang.failures.append(503)
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params())
    assert [r["input_ids"] for r in world.sglang.requests] == [world.prompt_ids] * 2
    assert sample.response == ANSWER_TURN
    assert sample.status == NewSample.Status.COMPLETED


async def test_sglang_rejecting_a_request_fails_the_sample_on_new_slime(world):
    await world.serve([Turn(SEARCH_TURN), Turn(http_status=400)])  # 4xx: not retried
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params())

    t1, obs = world.ids(SEARCH_TURN), world.ids(HAMLET_OBS)
    assert sample.status == NewSample.Status.FAILED
    assert sample.remove_sample is True
    assert sample.tokens[len(world.prompt_ids) :] == t1 + obs
    assert sample.loss_mask == [1] * len(t1) + [0] * len(obs)
    assert "HTTP 400" in sample.metadata["search_r1"]["generate_error"]
    assert len(world.sglang.requests) == 2
    assert_consistent(sample, world.prompt_ids)


async def test_sglang_rejecting_a_request_raises_on_old_slime(world):
    await world.serve([Turn(ANSWER_TURN)])
    world.sglang.failures.append(400)
    with pytest.raises(RequestFailed, match="SGLang /generate failed.*HTTP 400"):
        await generate(world.args(), world.sample(OldSample), world.sampling_params())


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_sglang_answers_that_say_try_later_are_retried(world, status):
    await world.serve([Turn(ANSWER_TURN)])
    world.sglang.failures.append(status)
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params())
    assert len(world.sglang.requests) == 2
    assert sample.status == NewSample.Status.COMPLETED


async def test_sglang_500_is_not_retried_and_fails_the_sample(world):
    # The engine failed on this very request: sending it again would only spend GPU time to fail again.
    await world.serve([Turn(ANSWER_TURN)])
    world.sglang.failures.append(500)
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params())
    assert len(world.sglang.requests) == 1
    assert sample.status == NewSample.Status.FAILED
    assert "HTTP 500" in sample.metadata["search_r1"]["generate_error"]
