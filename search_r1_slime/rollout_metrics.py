"""slime log hooks: how the policy uses the search engine, logged beside slime's own metrics.

    --custom-rollout-log-function-path search_r1_slime.rollout_metrics.log_rollout_data
    --custom-eval-rollout-log-function-path search_r1_slime.rollout_metrics.log_eval_rollout_data

slime calls the hooks before its own rollout / evaluation logging. Both log their metrics to
slime's sink (W&B, TensorBoard) at slime's step for that rollout and return False, so slime's own
``rollout/*``, ``perf/*`` and ``eval/*`` metrics are still logged as usual.

The numbers come from ``sample.metadata["search_r1"]``, which ``generate_with_search.generate``
fills for every trajectory; samples without it (another generate function) are skipped.
docs/metrics.md defines each metric and gives its formula and the source it follows. slime is imported only inside the hooks, and its logging sink is looked up
where each slime generation keeps it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from qa_em import em_check, extract_solution

logger = logging.getLogger(__name__)

PREFIX = "search_r1/"
# slime's log(args, metrics, step_key) and compute_rollout_step(args, rollout_id), newest first:
# slime.observability since 2026-08, slime.utils.logging_utils since 2026-01 (where an older
# slime has a logging_utils without log), slime.utils.tracking_utils before.
SINK_MODULES = ("slime.observability.logging_utils", "slime.utils.logging_utils", "slime.utils.tracking_utils")
STEP_MODULES = ("slime.observability.metric_utils", "slime.utils.metric_utils")
CLIENT_COUNTERS = ("sent", "cache_hits", "in_flight_hits", "http_requests")
DB_COUNTERS = ("paid", "paid_cache_hits", "budget_refusals")


def _ratio(metrics: dict[str, float], name: str, part: float, whole: float) -> None:
    # A ratio over nothing is left out rather than logged as a misleading 0.
    if whole:
        metrics[name] = part / whole


def _exact_match(sample: Any) -> int | None:
    """EM of the answer a model turn gave (0 without one); None when the sample has no gold answers."""
    try:
        targets = sample.label["ground_truth"]["target"]
    except (TypeError, KeyError):
        return None
    # An observation is never an answer: the invalid-action message holds "<answer> and </answer>".
    answer = extract_solution(sample.response) if sample.metadata["search_r1"]["answered"] else None
    return 0 if answer is None else em_check(answer, targets)


def _window(traces: Sequence[Mapping[str, Any]], name: str, counters: Sequence[str]) -> dict[str, float] | None:
    """What a counter snapshot ``name`` (``client_stats``, ``db_stats``) grew by during the rollout:
    the counters at the last trajectory's end minus those at the first trajectory's start
    (counters only grow, in one process)."""
    spans = [(t[f"{name}_start"], t[f"{name}_end"]) for t in traces if f"{name}_end" in t]
    if not spans:
        return None
    return {key: max(end[key] for _, end in spans) - min(start[key] for start, _ in spans) for key in counters}


def rollout_metrics(samples: Sequence[Any], client: bool = True) -> dict[str, float]:
    """The ``search_r1/*`` metrics of one rollout's samples (empty when none came from the plugin).

    ``client``: include the local client's cache and request counters (one window per rollout).
    """
    traced = [s for s in samples if isinstance(getattr(s, "metadata", None), dict) and "search_r1" in s.metadata]
    if not traced:
        return {}
    traces = [s.metadata["search_r1"] for s in traced]
    searches = [t["searches"] for t in traces]
    actions = [t["actions"] for t in traces]
    total_searches = sum(searches)
    metrics: dict[str, float] = {
        "searches_per_trajectory/mean": float(np.mean(searches)),
        "searches_per_trajectory/max": float(max(searches)),
        # Search-R1 counts every search action, the final turn's (never run) too. Every valid
        # action is a search or the one answer that ends the trajectory.
        "search_actions_per_trajectory/mean": float(np.mean([t["valid_actions"] - bool(t["answered"]) for t in traces])),
        "actions_per_trajectory/mean": float(np.mean(actions)),
        "actions_per_trajectory/max": float(max(actions)),
        "actions_per_trajectory/min": float(min(actions)),
        "answer_ratio": sum(bool(t["answered"]) for t in traces) / len(traces),
    }
    # Per trajectory, then averaged, as Search-R1's env/ratio_of_valid_action; a trajectory without
    # a finished model turn (SGLang failed first) has no ratio.
    valid_shares = [t["valid_actions"] / t["actions"] for t in traces if t["actions"]]
    if valid_shares:
        metrics["valid_action_ratio"] = float(np.mean(valid_shares))
    _ratio(metrics, "failed_search_ratio", sum(t["search_failures"] for t in traces), total_searches)
    _ratio(metrics, "no_result_ratio", sum(t["search_no_results"] for t in traces), total_searches)
    # Every round appends one observation: passages, "Search failed", or the invalid-action message.
    _ratio(metrics, "obs_truncated_ratio", sum(t["obs_truncated"] for t in traces), sum(t["turns"] for t in traces))
    _ratio(metrics, "slot_timeout_ratio", sum(t["search_slot_timeouts"] for t in traces), total_searches)
    # A blank query is a search action that was not searched.
    empty = sum(t["empty_queries"] for t in traces)
    _ratio(metrics, "empty_query_ratio", empty, total_searches + empty)
    for name, key in (("search_latency", "search_latencies"), ("search_slot_wait", "search_slot_waits")):
        seconds = [value for t in traces for value in t[key]]
        if seconds:
            metrics[f"{name}/p50"] = float(np.percentile(seconds, 50))
            metrics[f"{name}/p99"] = float(np.percentile(seconds, 99))
    window = _window(traces, "client_stats", CLIENT_COUNTERS) if client else None
    if window is not None:
        queries = window["sent"] + window["cache_hits"] + window["in_flight_hits"]
        _ratio(metrics, "local/cache_hit_ratio", window["cache_hits"], queries)
        _ratio(metrics, "local/in_flight_share_ratio", window["in_flight_hits"], queries)
        _ratio(metrics, "local/retriever_requests_per_query", window["http_requests"], queries)
    paid = _window(traces, "db_stats", DB_COUNTERS) if client else None
    if paid is not None:
        # The run's paid requests, every worker's together, as this process last saw the counter row.
        ends = [t["db_stats_end"] for t in traces if "db_stats_end" in t]
        metrics["paid_requests"] = float(max(end["run_paid"] for end in ends))
        metrics["paid_cost"] = float(max(end["run_cost"] for end in ends))
        metrics["budget_refusals"] = float(paid["budget_refusals"])
        _ratio(metrics, "paid_cache_hit_ratio", paid["paid_cache_hits"], paid["paid_cache_hits"] + paid["paid"])
    deep = [t for t in traces if "tool_calls" in t]  # deep-research mode (search_r1_slime.page_tool)
    if deep:
        metrics.update(_deep_research_metrics(deep))
    matches = [m for m in map(_exact_match, traced) if m is not None]
    if matches:
        metrics["exact_match"] = sum(matches) / len(matches)
    metrics.update(reward_metrics(traced))
    return {PREFIX + name: value for name, value in metrics.items()}


def _deep_research_metrics(traces: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The page tool's ``access/*`` and the long-horizon budgets' metrics (docs/metrics.md)."""
    from search_r1_slime.page_tool import FAILURE_KINDS

    metrics: dict[str, float] = {}
    for name, key in (("tool_calls_per_trajectory", "tool_calls"), ("turns_per_trajectory", "turns"), ("access/calls_per_trajectory", "accesses")):
        values = [t[key] for t in traces]
        metrics[f"{name}/mean"] = float(np.mean(values))
        metrics[f"{name}/max"] = float(max(values))
    for reason in ("tool_calls", "tokens"):
        metrics[f"budget_stop/{reason}_ratio"] = sum(t["final_turn"] == reason for t in traces) / len(traces)
    reads = sum(t["accesses"] for t in traces)
    failures = {kind: sum(t["access_failures"][kind] for t in traces) for kind in FAILURE_KINDS}
    _ratio(metrics, "access/failure_ratio", sum(failures.values()), reads)
    for kind, count in failures.items():
        _ratio(metrics, f"access/{kind}_ratio", count, reads)
    # Reads that went out to the web; the others were served by the page cache or a fetch in flight.
    _ratio(metrics, "access/fetch_ratio", sum(t["access_fetches"] for t in traces), reads)
    seconds = [value for t in traces for value in t["access_latencies"]]
    if seconds:
        metrics["access/latency/p50"] = float(np.percentile(seconds, 50))
        metrics["access/latency/p99"] = float(np.percentile(seconds, 99))
    return metrics


def reward_metrics(samples: Sequence[Any]) -> dict[str, float]:
    """``reward/<term>``: the mean of each reward term (``search_r1_slime.rewards``) over the
    samples ``reward_func`` scored; a term is averaged over the samples that have it."""
    terms: dict[str, list[float]] = {}
    for sample in samples:
        for name, value in (sample.metadata.get("search_r1_reward") or {}).items():
            terms.setdefault(name, []).append(value)
    return {f"reward/{name}": float(np.mean(values)) for name, values in terms.items()}


def eval_metrics(data: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Per evaluation set (one data source each): ``eval/<name>/search_r1/*``, EM included."""
    metrics: dict[str, float] = {}
    for name, result in data.items():
        for key, value in rollout_metrics(result.get("samples") or [], client=False).items():
            metrics[f"eval/{name}/{key}"] = value
    return metrics


def _slime_function(modules: Sequence[str], name: str) -> Callable[..., Any]:
    tried = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            tried.append(f"{module_name} ({exc})")
            continue
        function = getattr(module, name, None)
        if callable(function):
            return function
        tried.append(f"{module_name} (no {name})")
    raise ImportError(
        f"slime's {name}() was not found; tried {', '.join(tried)}. These hooks run inside slime: "
        "install slime in this environment, or drop the --custom-*-log-function-path flags."
    )


_wandb_step_defined = False


def _define_wandb_step(args: Any) -> None:
    """Plot ``search_r1/*`` against ``rollout/step`` in W&B, as slime does for ``rollout/*``."""
    global _wandb_step_defined
    if _wandb_step_defined or not getattr(args, "use_wandb", False):
        return
    import wandb

    wandb.define_metric(f"{PREFIX}*", step_metric="rollout/step")
    _wandb_step_defined = True


def _log(args: Any, rollout_id: int, metrics: dict[str, float], step_key: str) -> None:
    log = _slime_function(SINK_MODULES, "log")
    compute_rollout_step = _slime_function(STEP_MODULES, "compute_rollout_step")
    logger.info("search_r1 %s %d: %s", step_key.split("/")[0], rollout_id, metrics)
    log(args, {**metrics, step_key: compute_rollout_step(args, rollout_id)}, step_key=step_key)


def log_rollout_data(
    rollout_id: int, args: Any, samples: Sequence[Any], rollout_extra_metrics: dict | None, rollout_time: float
) -> bool:
    """slime's ``--custom-rollout-log-function-path`` hook; returns False so slime logs its own too."""
    metrics = rollout_metrics(samples)
    if metrics:
        _define_wandb_step(args)
        _log(args, rollout_id, metrics, "rollout/step")
    return False


def log_eval_rollout_data(rollout_id: int, args: Any, data: Mapping[str, Mapping[str, Any]], extra_metrics: dict | None) -> bool:
    """slime's ``--custom-eval-rollout-log-function-path`` hook; returns False like the one above."""
    metrics = eval_metrics(data)
    if metrics:
        _log(args, rollout_id, metrics, "eval/step")
    return False
