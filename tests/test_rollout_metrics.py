"""The slime log hooks: exact search_r1/* values for slime-shaped samples of known behaviour,
logged through a captured sink at slime's step, on every slime layout of the sink, and False
returned so slime's own logging still runs."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from generate_with_search import INVALID_ACTION_MESSAGE
from search_r1_slime import rollout_metrics
from tests.fakes.sample import SAMPLE_CLASSES

OBS = "\n\n<information>Doc 1(Title: \"Paris\") Paris is the capital of France.</information>\n\n"
GOLD = {"style": "rule", "ground_truth": {"target": ["Paris"]}}


def counters(sent=0, cache_hits=0, in_flight_hits=0, batches=0, http_requests=0) -> dict[str, int]:
    return dict(sent=sent, cache_hits=cache_hits, in_flight_hits=in_flight_hits, batches=batches, http_requests=http_requests)


def trace(**values) -> dict:
    base = dict(turns=0, searches=0, search_failures=0, invalid_actions=0, obs_truncated=0, actions=0,
                valid_actions=0, answered=False, search_no_results=0, search_latencies=[], empty_queries=0,
                search_slot_waits=[], search_slot_timeouts=0)
    return {**base, **values}


def rollout(sample_cls) -> list:
    """Four samples: the expected metrics below are computed by hand from them."""
    searched_and_right = sample_cls(
        response="<think> a </think>\n<search> capital of france </search>" + OBS + "<think> b </think>\n<answer> Paris </answer>",
        label=GOLD, reward=1.0,
        metadata={"search_r1": trace(turns=1, searches=1, actions=2, valid_actions=2, answered=True, search_latencies=[0.1],
                                     search_slot_waits=[0.5],
                                     client_stats_start=counters(), client_stats_end=counters(sent=1, batches=1, http_requests=2))},
    )
    # Search failed (no slot came free within 2 s, so it was not sent), then one found nothing (its
    # observation cut), then the final turn searched again.
    never_answered = sample_cls(
        response="<think> a </think>\n<search> q1 </search>...<search> q2 </search>...<search> q3 </search>",
        label=GOLD, reward=0.0,
        metadata={"search_r1": trace(turns=2, searches=2, search_failures=1, search_no_results=1, obs_truncated=1,
                                     actions=3, valid_actions=3, search_latencies=[0.2], search_slot_timeouts=1,
                                     search_slot_waits=[2.0, 0.0],
                                     client_stats_start=counters(), client_stats_end=counters(sent=1, cache_hits=1, in_flight_hits=1, batches=1, http_requests=2))},
    )
    # An invalid action, then a wrong answer in a valid format: reward 0.2 (format_score), EM 0.
    # The invalid-action message in the response holds "<answer> and </answer>"; EM reads the last answer.
    invalid_then_wrong = sample_cls(
        response="I think" + INVALID_ACTION_MESSAGE + "<think> b </think>\n<answer> Lyon </answer>",
        label=GOLD, reward=0.2,
        metadata={"search_r1": trace(turns=1, invalid_actions=1, actions=2, valid_actions=1, answered=True,
                                     client_stats_start=counters(sent=1), client_stats_end=counters(sent=1))},
    )
    not_ours = sample_cls(response="<answer> Paris </answer>", label=GOLD, reward=1.0, metadata={})
    return [searched_and_right, never_answered, invalid_then_wrong, not_ours]


EXPECTED = {
    "search_r1/searches_per_trajectory/mean": 1.0,  # (1 + 2 + 0) / 3
    "search_r1/searches_per_trajectory/max": 2.0,
    # Search-R1's env/number_of_valid_search: the final turn's search (not run) counts: (1 + 3 + 0) / 3.
    "search_r1/search_actions_per_trajectory/mean": 4 / 3,
    "search_r1/actions_per_trajectory/mean": 7 / 3,
    "search_r1/actions_per_trajectory/max": 3.0,
    "search_r1/actions_per_trajectory/min": 2.0,
    "search_r1/answer_ratio": 2 / 3,
    "search_r1/valid_action_ratio": (2 / 2 + 3 / 3 + 1 / 2) / 3,  # per trajectory, then averaged (pooled: 6 / 7)
    "search_r1/failed_search_ratio": 1 / 3,
    "search_r1/no_result_ratio": 1 / 3,
    "search_r1/obs_truncated_ratio": 1 / 4,  # 1 cut observation of 1 + 2 + 1
    "search_r1/slot_timeout_ratio": 1 / 3,
    "search_r1/empty_query_ratio": 0.0,
    "search_r1/search_latency/p50": pytest.approx(0.15, abs=1e-12),  # of [0.1, 0.2]: the timed-out search never ran
    "search_r1/search_latency/p99": pytest.approx(0.199, abs=1e-12),  # 0.1 + 0.99 * (0.2 - 0.1)
    "search_r1/search_slot_wait/p50": 0.5,  # of [0.0, 0.5, 2.0]
    "search_r1/search_slot_wait/p99": pytest.approx(1.97, abs=1e-12),  # 0.5 + 0.98 * (2.0 - 0.5)
    # Client traffic from the first start to the last end: 1 sent, 1 cache hit, 1 shared, 2 requests.
    "search_r1/local/cache_hit_ratio": 1 / 3,
    "search_r1/local/in_flight_share_ratio": 1 / 3,
    "search_r1/local/retriever_requests_per_query": 2 / 3,
    "search_r1/exact_match": 1 / 3,  # while the mean reward is (1 + 0 + 0.2) / 3
}


def test_action_metrics_follow_search_r1s_formulas_on_uneven_trajectories():
    """Search-R1's verl/trainer/ppo/ray_trainer.py (compute_data_metrics) on the per-trajectory
    counts it keeps (turns_stats, valid_action_stats, valid_search_stats, active_mask), against
    ours on the same trajectories. Turn counts are uneven, so a pooled ratio would differ."""
    traces = [trace(actions=1, valid_actions=1, answered=True),  # answers at once
              trace(actions=3, valid_actions=1, searches=1, invalid_actions=1, turns=2),  # then a final-turn search
              trace(actions=5, valid_actions=2, searches=1, invalid_actions=3, turns=4, answered=True)]
    samples = [SAMPLE_CLASSES[1](response="", metadata={"search_r1": t}) for t in traces]
    turns_stats = np.array([1, 3, 5], dtype=np.int16)
    valid_action_stats = np.array([1, 1, 2], dtype=np.int16)
    valid_search_stats = np.array([0, 1, 1], dtype=np.int16)
    active_mask = np.array([0, 1, 0], dtype=np.int16)  # still active at the end: never answered

    metrics = rollout_metrics.rollout_metrics(samples)

    search_r1 = {
        "valid_action_ratio": float((valid_action_stats / turns_stats).mean()),
        "answer_ratio": 1 - float(active_mask.mean()),
        "actions_per_trajectory/mean": float(turns_stats.mean()),
        "actions_per_trajectory/max": float(turns_stats.max()),
        "actions_per_trajectory/min": float(turns_stats.min()),
        "search_actions_per_trajectory/mean": float(valid_search_stats.mean()),
    }
    assert {name: metrics[f"search_r1/{name}"] for name in search_r1} == pytest.approx(search_r1, rel=1e-12)
    assert search_r1["valid_action_ratio"] == pytest.approx((1 + 1 / 3 + 2 / 5) / 3)
    assert search_r1["valid_action_ratio"] != pytest.approx(4 / 9)  # the pooled ratio, which we do not log


class Sink:
    """slime's log(args, metrics, step_key) and compute_rollout_step(args, rollout_id), captured."""

    def __init__(self):
        self.calls: list[tuple[object, dict, str]] = []

    def log(self, args, metrics, step_key):
        self.calls.append((args, dict(metrics), step_key))

    @staticmethod
    def compute_rollout_step(args, rollout_id):
        return rollout_id * args.rollout_batch_size  # not the rollout id, so the test sees whose step it is


def install_fake_slime(monkeypatch, layout: str) -> Sink:
    """Put the sink where each slime generation keeps it (and nothing where it does not)."""
    sink = Sink()
    packages = {"slime": [], "slime.utils": []}
    modules = {}
    if layout == "2026-08":
        packages["slime.observability"] = []
        modules["slime.observability.logging_utils"] = {"log": sink.log}
        modules["slime.observability.metric_utils"] = {"compute_rollout_step": sink.compute_rollout_step}
    elif layout == "2026-01":
        modules["slime.utils.logging_utils"] = {"log": sink.log}
        modules["slime.utils.metric_utils"] = {"compute_rollout_step": sink.compute_rollout_step}
    else:  # 2025-12: logging_utils exists but only configures logging
        modules["slime.utils.logging_utils"] = {"configure_logger": lambda prefix="": None}
        modules["slime.utils.tracking_utils"] = {"log": sink.log}
        modules["slime.utils.metric_utils"] = {"compute_rollout_step": sink.compute_rollout_step}
    for name, path in packages.items():
        module = types.ModuleType(name)
        module.__path__ = path
        monkeypatch.setitem(sys.modules, name, module)
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        vars(module).update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    return sink


def slime_args(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{"rollout_batch_size": 32, "use_wandb": False, "use_tensorboard": False, **overrides})


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
def test_rollout_metrics_of_known_trajectories(sample_cls):
    assert rollout_metrics.rollout_metrics(rollout(sample_cls)) == EXPECTED


@pytest.mark.parametrize("layout", ["2026-08", "2026-01", "2025-12"])
@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
def test_hook_logs_at_slimes_step_and_lets_slime_log_its_own(monkeypatch, layout, sample_cls):
    sink = install_fake_slime(monkeypatch, layout)
    args = slime_args()

    keep_slimes_logging = not rollout_metrics.log_rollout_data(7, args, rollout(sample_cls), None, 12.5)

    assert keep_slimes_logging
    assert sink.calls == [(args, {**EXPECTED, "rollout/step": 7 * 32}, "rollout/step")]


def test_hook_logs_nothing_for_samples_of_another_generate_function(monkeypatch):
    sink = install_fake_slime(monkeypatch, "2026-08")
    samples = rollout(SAMPLE_CLASSES[1])[3:]
    assert rollout_metrics.log_rollout_data(0, slime_args(), samples, {"rollout/x": 1.0}, 1.0) is False
    assert sink.calls == []


def test_without_slime_the_hook_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "slime", None)  # "import slime" fails as if not installed
    with pytest.raises(ImportError, match=r"slime's log\(\) was not found; tried slime.observability.logging_utils"):
        rollout_metrics.log_rollout_data(0, slime_args(), rollout(SAMPLE_CLASSES[0]), None, 1.0)


def test_wandb_plots_search_r1_metrics_against_the_rollout_step(monkeypatch):
    install_fake_slime(monkeypatch, "2026-08")
    defined = []
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(define_metric=lambda name, **kw: defined.append((name, kw))))
    monkeypatch.setattr(rollout_metrics, "_wandb_step_defined", False)
    for rollout_id in range(2):
        rollout_metrics.log_rollout_data(rollout_id, slime_args(use_wandb=True), rollout(SAMPLE_CLASSES[1]), None, 1.0)
    assert defined == [("search_r1/*", {"step_metric": "rollout/step"})]


@pytest.mark.parametrize("sample_cls", SAMPLE_CLASSES)
def test_eval_hook_adds_exact_match_per_data_source(monkeypatch, sample_cls):
    sink = install_fake_slime(monkeypatch, "2026-01")
    right, _, wrong, _ = rollout(sample_cls)
    data = {
        "nq": {"rewards": [1.0, 0.2], "truncated": [False, False], "samples": [right, wrong]},
        "hotpotqa": {"rewards": [0.0], "truncated": [False]},  # no samples: nothing to add
    }

    assert rollout_metrics.log_eval_rollout_data(3, slime_args(), data, None) is False

    assert sink.calls == [(slime_args(), {
        "eval/nq/search_r1/searches_per_trajectory/mean": 0.5,
        "eval/nq/search_r1/searches_per_trajectory/max": 1.0,
        "eval/nq/search_r1/search_actions_per_trajectory/mean": 0.5,
        "eval/nq/search_r1/actions_per_trajectory/mean": 2.0,
        "eval/nq/search_r1/actions_per_trajectory/max": 2.0,
        "eval/nq/search_r1/actions_per_trajectory/min": 2.0,
        "eval/nq/search_r1/answer_ratio": 1.0,
        "eval/nq/search_r1/valid_action_ratio": 0.75,
        "eval/nq/search_r1/failed_search_ratio": 0.0,
        "eval/nq/search_r1/no_result_ratio": 0.0,
        "eval/nq/search_r1/obs_truncated_ratio": 0.0,
        "eval/nq/search_r1/slot_timeout_ratio": 0.0,
        "eval/nq/search_r1/empty_query_ratio": 0.0,
        "eval/nq/search_r1/search_latency/p50": 0.1,
        "eval/nq/search_r1/search_latency/p99": 0.1,
        "eval/nq/search_r1/search_slot_wait/p50": 0.5,
        "eval/nq/search_r1/search_slot_wait/p99": 0.5,
        "eval/nq/search_r1/exact_match": 0.5,
        "eval/step": 3 * 32,
    }, "eval/step")]


def deep_trace(**values) -> dict:
    from search_r1_slime.page_tool import new_metrics

    failures = {**new_metrics()["access_failures"], **values.pop("failures", {})}
    return trace(**{**new_metrics(), "access_failures": failures, **values})


def test_deep_research_metrics_are_counted_per_read_and_per_trajectory():
    from tests.fakes.sample import NewSample

    samples = [
        # 3 reads: one fetched, one from the cache, one refused as not seen; the tool-call cap ended it.
        NewSample(response="", label=GOLD, metadata={"search_r1": deep_trace(
            turns=5, tool_calls=5, accesses=3, access_fetches=1, access_latencies=[0.1, 0.3],
            failures={"not_seen": 1}, final_turn="tool_calls")}),
        # 1 read that timed out and went out; the token reserve ended it.
        NewSample(response="", label=GOLD, metadata={"search_r1": deep_trace(
            turns=2, tool_calls=2, accesses=1, access_fetches=1, access_latencies=[2.0], failures={"timeout": 1}, final_turn="tokens")}),
        # No reads: searched once and answered.
        NewSample(response="", label=GOLD, metadata={"search_r1": deep_trace(turns=1, tool_calls=1)}),
    ]
    metrics = rollout_metrics.rollout_metrics(samples, client=False)
    access = {k[len("search_r1/"):]: v for k, v in metrics.items() if k.startswith("search_r1/access/") or "budget" in k or "per_trajectory" in k}
    assert access["tool_calls_per_trajectory/mean"] == pytest.approx(8 / 3) and access["tool_calls_per_trajectory/max"] == 5
    assert access["turns_per_trajectory/mean"] == pytest.approx(8 / 3) and access["turns_per_trajectory/max"] == 5
    assert access["access/calls_per_trajectory/mean"] == pytest.approx(4 / 3) and access["access/calls_per_trajectory/max"] == 3
    assert access["budget_stop/tool_calls_ratio"] == pytest.approx(1 / 3) and access["budget_stop/tokens_ratio"] == pytest.approx(1 / 3)
    assert access["access/failure_ratio"] == 2 / 4
    assert access["access/not_seen_ratio"] == 1 / 4 and access["access/timeout_ratio"] == 1 / 4 and access["access/too_big_ratio"] == 0
    assert access["access/fetch_ratio"] == 2 / 4
    assert access["access/latency/p50"] == pytest.approx(0.3) and access["access/latency/p99"] == pytest.approx(0.3 + 0.98 * 1.7)


def test_no_deep_research_metrics_when_the_mode_is_off():
    metrics = rollout_metrics.rollout_metrics(rollout(SAMPLE_CLASSES[0]), client=False)
    assert not any("access/" in key or "budget_stop" in key or "tool_calls" in key for key in metrics)
