"""The per-trajectory metrics the turn loop records for the log hooks: Search-R1's action
accounting (every model turn is an action; answers count only in model turns), no-result
searches, search latencies and the local client's counters; and the hook's reading of them."""

import pytest

from generate_with_search import INVALID_ACTION_MESSAGE, generate
from search_r1_slime.rollout_metrics import rollout_metrics
from tests.fakes.sample import SAMPLE_CLASSES, NewSample
from tests.fakes.sglang import Turn
from tests.test_generate_turns import ANSWER_TURN, SEARCH_TURN

RAMBLING = "I think it is Shakespeare."


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
async def test_invalid_action_empty_search_and_a_final_search_give_no_answer(world, sample_cls):
    # Turn 1 invalid, turn 2 a search that finds nothing, turn 3 (final) searches again: not run.
    await world.serve([Turn(RAMBLING, eos=True), Turn(SEARCH_TURN), Turn(SEARCH_TURN)], corpus={"who wrote hamlet": []})
    sample = await generate(world.args(max_turns=2), world.sample(sample_cls), world.sampling_params(max_new_tokens=1000))

    metrics = sample.metadata["search_r1"]
    # The invalid-action message the model was shown holds both tags; it is no answer of the model's.
    assert "<answer> and </answer>" in INVALID_ACTION_MESSAGE and INVALID_ACTION_MESSAGE in sample.response
    assert (metrics["actions"], metrics["valid_actions"], metrics["answered"]) == (3, 2, False)
    assert (metrics["turns"], metrics["invalid_actions"], metrics["searches"]) == (2, 1, 1)
    assert (metrics["search_no_results"], metrics["search_failures"]) == (1, 0)
    assert len(metrics["search_latencies"]) == 1 and 0 < metrics["search_latencies"][0] < 2
    assert metrics["client_stats_end"]["sent"] - metrics["client_stats_start"]["sent"] == 1
    assert sample.status == sample_cls.Status.COMPLETED
    # The hook: one search run, two search actions (Search-R1's count, the final turn's included).
    logged = rollout_metrics([sample])
    assert logged["search_r1/searches_per_trajectory/mean"] == 1.0
    assert logged["search_r1/search_actions_per_trajectory/mean"] == 2.0
    assert logged["search_r1/valid_action_ratio"] == 2 / 3


async def test_a_turn_cut_by_the_budget_is_an_invalid_action(world):
    await world.serve([Turn(RAMBLING * 10)])
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params(max_new_tokens=5))
    metrics = sample.metadata["search_r1"]
    assert sample.status == NewSample.Status.TRUNCATED
    assert (metrics["actions"], metrics["valid_actions"], metrics["answered"]) == (1, 0, False)
    assert metrics["search_latencies"] == []


async def test_failed_searches_have_latencies_too(world):
    await world.serve([Turn(SEARCH_TURN), Turn(SEARCH_TURN)], corpus={})  # every retrieve answers 500
    sample = await generate(world.args(max_turns=1, search_timeout=0.5), world.sample(NewSample), world.sampling_params())
    metrics = sample.metadata["search_r1"]
    assert (metrics["searches"], metrics["search_failures"], metrics["search_no_results"]) == (1, 1, 0)
    assert len(metrics["search_latencies"]) == 1 and metrics["search_latencies"][0] <= 1.0


async def test_the_hook_reads_what_real_trajectories_recorded(world):
    # Two trajectories of one question, one after the other: the second search is a cache hit.
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)] * 2)
    samples = []
    for _ in range(2):
        world.sglang.expect_fresh_start(world.prompt_ids)
        samples.append(await generate(world.args(), world.sample(NewSample), world.sampling_params()))

    metrics = rollout_metrics(samples)
    latencies = [s.metadata["search_r1"]["search_latencies"][0] for s in samples]
    assert metrics.pop("search_r1/search_latency/p50") == pytest.approx(sum(latencies) / 2)
    assert metrics.pop("search_r1/search_latency/p99") == pytest.approx(min(latencies) + 0.99 * abs(latencies[1] - latencies[0]))
    waits = [s.metadata["search_r1"]["search_slot_waits"][0] for s in samples]
    assert metrics.pop("search_r1/search_slot_wait/p50") == pytest.approx(sum(waits) / 2)
    assert metrics.pop("search_r1/search_slot_wait/p99") == pytest.approx(min(waits) + 0.99 * abs(waits[1] - waits[0]))
    assert metrics == {
        "search_r1/searches_per_trajectory/mean": 1.0,
        "search_r1/searches_per_trajectory/max": 1.0,
        "search_r1/search_actions_per_trajectory/mean": 1.0,
        "search_r1/actions_per_trajectory/mean": 2.0,
        "search_r1/actions_per_trajectory/max": 2.0,
        "search_r1/actions_per_trajectory/min": 2.0,
        "search_r1/answer_ratio": 1.0,
        "search_r1/valid_action_ratio": 1.0,
        "search_r1/failed_search_ratio": 0.0,
        "search_r1/no_result_ratio": 0.0,
        "search_r1/obs_truncated_ratio": 0.0,
        "search_r1/slot_timeout_ratio": 0.0,
        "search_r1/empty_query_ratio": 0.0,
        "search_r1/local/cache_hit_ratio": 0.5,
        "search_r1/local/in_flight_share_ratio": 0.0,
        "search_r1/local/retriever_requests_per_query": 0.5,
        "search_r1/exact_match": 1.0,
    }
    assert world.retriever.queries_received == ["who wrote hamlet"]
