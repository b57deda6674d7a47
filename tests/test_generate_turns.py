"""The turn loop end to end: exact tokens, masks, log-probs, observations, statuses and metrics."""

import copy

import pytest

from generate_with_search import INVALID_ACTION_MESSAGE, generate
from tests.fakes.sample import SAMPLE_CLASSES, NewSample, OldSample
from tests.fakes.sglang import FakeSGLang, Turn

SEARCH_TURN = "<think> I need the author. </think>\n<search> who wrote hamlet </search>"
ANSWER_TURN = "<think> The documents say Shakespeare. </think>\n<answer> William Shakespeare </answer>"
HAMLET_OBS = (
    "\n\n<information>"
    'Doc 1(Title: "Hamlet") Hamlet is a tragedy written by William Shakespeare.\n'
    'Doc 2(Title: "William Shakespeare") William Shakespeare was an English playwright.\n'
    'Doc 3(Title: "Elsinore") Elsinore is the setting of Hamlet.'
    "</information>\n\n"
)


def model_log_probs(start: int, count: int) -> list[float]:
    return [FakeSGLang.logprob(start + i) for i in range(count)]


def assert_consistent(sample, prompt_ids):
    assert sample.tokens[: len(prompt_ids)] == prompt_ids
    assert len(sample.tokens) == len(prompt_ids) + sample.response_length
    assert len(sample.loss_mask) == sample.response_length
    if sample.rollout_log_probs is not None:
        assert len(sample.rollout_log_probs) == sample.response_length


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
async def test_search_then_answer_gives_exact_tokens_masks_and_log_probs(world, sample_cls):
    # The model keeps writing after </search>; the engine stops at the tag.
    await world.serve([Turn(SEARCH_TURN + " and then some junk"), Turn(ANSWER_TURN + "\nQuestion: more junk")])
    sample = world.sample(sample_cls)

    sample = await generate(world.args(), sample, world.sampling_params())

    p, t1, obs, t2 = world.prompt_ids, world.ids(SEARCH_TURN), world.ids(HAMLET_OBS), world.ids(ANSWER_TURN)
    assert [r["input_ids"] for r in world.sglang.requests] == [p, p + t1 + obs]
    assert sample.tokens == p + t1 + obs + t2
    assert sample.response == SEARCH_TURN + HAMLET_OBS + ANSWER_TURN
    assert sample.response_length == len(t1 + obs + t2)
    assert sample.loss_mask == [1] * len(t1) + [0] * len(obs) + [1] * len(t2)
    assert sample.rollout_log_probs == (
        model_log_probs(len(p), len(t1)) + [0.0] * len(obs) + model_log_probs(len(p + t1 + obs), len(t2))
    )
    assert sample.status == sample_cls.Status.COMPLETED
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
    assert world.retriever.queries_received == ["who wrote hamlet"]
    assert world.retriever.requests[0]["topk"] == 3
    assert world.sglang.script_done


async def test_old_and_new_slime_end_with_identical_fields(world, tokenizer, tokenizer_dir):
    results = []
    for sample_cls in (OldSample, NewSample):
        w = type(world)(tokenizer, tokenizer_dir)
        await w.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
        try:
            s = await generate(w.args(), w.sample(sample_cls), w.sampling_params())
        finally:
            await w.close()
        # Latencies and the loop's client counters differ between runs by nature; the rest must not.
        counters = {k: v for k, v in s.metadata["search_r1"].items() if k not in ("search_latencies", "search_slot_waits", "client_stats_start", "client_stats_end")}
        results.append((s.tokens, s.response, s.response_length, s.loss_mask, s.rollout_log_probs, s.status.value, counters))
    assert results[0] == results[1]


async def test_request_carries_caller_params_our_stops_and_the_remaining_budget(world):
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
    params = world.sampling_params(max_new_tokens=300, stop=["<|im_end|>", "</answer>"], temperature=0.7, stop_token_ids=[2])
    before = copy.deepcopy(params)

    sample = await generate(world.args(), world.sample(NewSample), params)

    assert params == before  # the caller's dict is untouched
    first, second = (r["sampling_params"] for r in world.sglang.requests)
    assert first["stop"] == second["stop"] == ["<|im_end|>", "</answer>", "</search>"]
    assert first["max_new_tokens"] == 300
    assert second["max_new_tokens"] == 300 - len(world.ids(SEARCH_TURN) + world.ids(HAMLET_OBS))
    for key in ("temperature", "top_p", "top_k", "stop_token_ids", "skip_special_tokens", "no_stop_trim"):
        assert first[key] == params[key]
    assert all(r["return_logprob"] is True for r in world.sglang.requests)
    assert sample.status == NewSample.Status.COMPLETED


async def test_a_single_stop_string_from_the_caller_is_kept(world):
    await world.serve([Turn(ANSWER_TURN)])
    await generate(world.args(), world.sample(NewSample), world.sampling_params(stop="Question:"))
    assert world.sglang.requests[0]["sampling_params"]["stop"] == ["Question:", "</search>", "</answer>"]


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
async def test_after_max_turns_a_final_turn_runs_and_its_search_is_not_executed(world, sample_cls):
    second_search = "<think> Let me check again. </think>\n<search> hamlet author </search>"
    await world.serve([Turn(SEARCH_TURN), Turn(second_search)])

    sample = await generate(world.args(max_turns=1), world.sample(sample_cls), world.sampling_params())

    p, t1, obs, t2 = world.prompt_ids, world.ids(SEARCH_TURN), world.ids(HAMLET_OBS), world.ids(second_search)
    assert world.retriever.queries_received == ["who wrote hamlet"]
    assert sample.tokens == p + t1 + obs + t2
    assert sample.response.endswith("</search>")
    assert sample.loss_mask == [1] * len(t1) + [0] * len(obs) + [1] * len(t2)
    assert sample.status == sample_cls.Status.COMPLETED
    assert sample.metadata["search_r1"]["turns"] == 1
    assert sample.metadata["search_r1"]["searches"] == 1


async def test_default_two_searches_then_the_final_answer(world):
    second_search = "<think> Who else? </think>\n<search> hamlet author </search>"
    second_obs = (
        "\n\n<information>"
        'Doc 1(Title: "William Shakespeare") William Shakespeare was an English playwright.\n'
        'Doc 2(Title: "Elsinore") Elsinore is the setting of Hamlet.\n'
        'Doc 3(Title: "Globe Theatre") A theatre in London.'
        "</information>\n\n"
    )
    await world.serve([Turn(SEARCH_TURN), Turn(second_search), Turn(ANSWER_TURN)])
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params(max_new_tokens=1000))
    assert sample.response == SEARCH_TURN + HAMLET_OBS + second_search + second_obs + ANSWER_TURN
    assert world.retriever.queries_received == ["who wrote hamlet", "hamlet author"]
    assert sample.metadata["search_r1"]["turns"] == 2
    assert sample.metadata["search_r1"]["searches"] == 2
    assert sample.status == NewSample.Status.COMPLETED


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
async def test_invalid_action_gets_search_r1_message_and_counts_as_a_turn(world, tokenizer, sample_cls):
    rambling = "I think it is Shakespeare."
    await world.serve([Turn(rambling, eos=True), Turn(ANSWER_TURN)])

    sample = await generate(world.args(max_turns=1), world.sample(sample_cls), world.sampling_params())

    p, t1, msg, t2 = world.prompt_ids, world.ids(rambling) + [tokenizer.eos_token_id], world.ids(INVALID_ACTION_MESSAGE), world.ids(ANSWER_TURN)
    # The EOS token is a model token (trained on); skip_special_tokens keeps it out of the text.
    assert sample.tokens == p + t1 + msg + t2
    assert sample.response == rambling + INVALID_ACTION_MESSAGE + ANSWER_TURN
    assert sample.loss_mask == [1] * len(t1) + [0] * len(msg) + [1] * len(t2)
    assert sample.metadata["search_r1"]["turns"] == 1
    assert sample.metadata["search_r1"]["invalid_actions"] == 1
    assert sample.metadata["search_r1"]["searches"] == 0
    assert sample.status == sample_cls.Status.COMPLETED


def test_invalid_action_message_is_search_r1s_exact_text():
    assert INVALID_ACTION_MESSAGE == (
        "\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
        "</search>. If I want to give the final answer, I should put the answer between <answer> and </answer>. "
        "Let me try again.\n"
    )


async def test_stop_string_ending_inside_a_token_keeps_the_whole_token(world, tokenizer):
    text = "<think> Known. </think>\n<answer> William Shakespeare </answer>."
    await world.serve([Turn(text + " More text.")])
    ids = world.ids(text)
    assert tokenizer.decode(ids[-1:]) == ">."  # the stop string ends mid-token

    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params())

    assert sample.tokens == world.prompt_ids + ids
    assert sample.response == text
    assert sample.status == NewSample.Status.COMPLETED
    assert world.sglang.script_done


async def test_answer_in_the_first_turn_ends_the_trajectory(world):
    await world.serve([Turn(ANSWER_TURN)])
    sample = await generate(world.args(), world.sample(OldSample), world.sampling_params())
    assert sample.response == ANSWER_TURN
    assert sample.loss_mask == [1] * len(world.ids(ANSWER_TURN))
    assert sample.metadata["search_r1"]["turns"] == 0
    assert world.retriever.requests == []


async def test_stop_strings_are_never_trimmed_from_the_text(world):
    # With trimming the text would lose "</search>" while its tokens stay: the action would be missed.
    await world.serve([Turn(SEARCH_TURN), Turn(ANSWER_TURN)])
    sample = await generate(world.args(), world.sample(NewSample), world.sampling_params(no_stop_trim=False))
    assert all(r["sampling_params"]["no_stop_trim"] is True for r in world.sglang.requests)
    assert sample.response == SEARCH_TURN + HAMLET_OBS + ANSWER_TURN
