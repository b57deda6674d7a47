"""Search-R1 rollouts for slime: multi-turn generation with a search engine in the loop.

slime loads ``generate`` with ``--custom-generate-function-path generate_with_search.generate``
and ``reward_func`` with ``--custom-rm-path generate_with_search.reward_func``.

One trajectory, as in Search-R1 (``search_r1/llm_agent/generation.py``): the model writes until
it closes ``</search>`` or ``</answer>``. A search is run and its passages come back as an
observation; an answer ends the trajectory; anything else gets Search-R1's invalid-action message.
After ``max_turns`` such rounds the model gets one final turn in which no search is executed, so
it has to answer. If it searches anyway in that final turn, the trajectory ends there,
``COMPLETED`` without an answer (Search-R1 does the same; the reward then sees no answer).

Token in, token out: every ``/generate`` request carries the prompt ids plus every response id so
far; model tokens and log-probs come from SGLang's ``output_token_logprobs`` and are never
re-tokenised. Only observations are tokenised here. ``loss_mask`` is 1 on model tokens and 0 on
observation tokens. The caller's ``max_new_tokens`` is the budget of the whole response, model
and observation tokens together.

Partial rollout (``args.partial_rollout``): a sample that SGLang aborted keeps what it generated
and its counters (``sample.metadata["search_r1"]``); the next call continues the same turn from
the last token, keeping earlier loss-mask values (slime may have zeroed them). The action of the
resumed turn is parsed from the whole turn's text; if the abort landed on the token that closed
the action, that action runs without a new generation. One limit, inherited from SGLang: a stop string
split exactly across the abort point is not seen by the engine, which then writes on past it.

slime's rollout modes (docs/rollout-modes.md): with ``--router-policy consistent_hashing``
every turn carries ``X-SMG-Routing-Key: <sample.session_id>``; with ``--use-rollout-routing-replay``
every turn asks for the routed experts, kept at one row per token but the last; observations are
appended as non-trainable tokens, so top-p replay gives them empty spans; ``evaluation=True``
(slime's evaluation) never resumes a partial trajectory.

Deep-research mode (docs/deep_research.md, ``search_r1_slime.page_tool``), off by default: a page
tool ``<access> URL </access>`` beside search, and budgets (``max_tool_calls``,
``answer_reserve_tokens``, ``max_context_tokens``) after which the last tool round's observation
tells the model to answer and its next turn is the final one.

Configuration: ``SEARCH_R1_CONFIGS`` below, overridden per run by a ``search_r1:`` mapping in
slime's ``--custom-config-path`` YAML (it arrives as ``args.search_r1``), merged at call time.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from search_r1_slime import page_tool
from search_r1_slime.http_client import RequestFailed, RetryPolicy, request_json
from search_r1_slime.search_db import BudgetSpent
from search_r1_slime.search_slots import SearchSlot, SlotTimeout
from search_r1_slime.settings import (
    DEFAULTS, RETRIEVAL_API_KEY_ENV, SERPER_API_KEY_ENV, ConfigError, SearchR1Config, check_section_name, resolve_secret,
    uploaded_secret_problems,
)

logger = logging.getLogger(__name__)

# Every key, its type, range and default is declared once, in search_r1_slime.settings
# (docs/configuration.md explains each). Edit this dict or override it per run (see above).
SEARCH_R1_CONFIGS: dict[str, Any] = DEFAULTS.model_dump()

INVALID_ACTION_MESSAGE = (
    "\nMy previous action is invalid. "
    "If I want to search, I should put the query between <search> and </search>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>. "
    "Let me try again.\n"
)
INFORMATION_HEAD = "\n\n<information>"
INFORMATION_TAIL = "</information>\n\n"
# What the model reads when a search fails or finds nothing: never an empty <information>.
SEARCH_FAILED_TEXT = "Search failed: no documents could be retrieved for this query."
NO_RESULTS_TEXT = "No documents were found for this query."
# What the model reads once the run's paid searches (search_r1.search_db.max_paid_requests) are spent.
BUDGET_SPENT_TEXT = "Search unavailable: this run's budget for paid searches is spent. Answer with what you already know."
# What a blank <search> </search> gets, without asking any backend: there is nothing to search for.
EMPTY_QUERY_TEXT = "The search query was empty, so nothing was searched. Put the query between <search> and </search>."

_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_ACTION_STOPS = ("</search>", "</answer>")
# Generation legitimately takes minutes: no per-attempt timeout, no deadline, a few attempts. Only
# failures that say the request did not reach a working engine are retried: a refused connection
# (nothing was sent), 429, and the router's/engine's "unavailable" answers 502/503/504. A retried
# request would be harmless for correctness (tokens are appended only from a successful answer, and
# the retry sends the same input_ids), but a 500 or a connection dropped after sending usually means
# the engine failed on this very request, so repeating it only spends GPU time to fail again.
_GENERATE_POLICY = RetryPolicy(
    max_attempts=5,
    deadline_s=None,
    attempt_timeout_s=None,
    backoff_base_s=1.0,
    backoff_max_s=10.0,
    retry_statuses=frozenset({429, 502, 503, 504}),
    retry_after_send=False,
)


# ---------------------------------------------------------------------------- configuration


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        both_mappings = isinstance(merged.get(key), Mapping) and isinstance(value, Mapping)
        merged[key] = _merge(merged[key], value) if both_mappings else value
    return merged


def resolve_config(args: Any) -> dict[str, Any]:
    """``SEARCH_R1_CONFIGS`` with ``args.search_r1`` (from ``--custom-config-path``) merged over it.

    Raises ``ConfigError`` naming every unknown key and every bad value by its dotted name, every
    key written in ``args.search_r1`` while ``args.use_wandb`` uploads ``args`` to W&B, and a key
    in the environment too short to be one.
    """
    check_section_name(getattr(args, "__dict__", ()))  # slime sets each top-level YAML key as an attribute
    override = getattr(args, "search_r1", None) or {}
    if not isinstance(override, Mapping):
        problem = (
            f"search_r1 must be a mapping of settings (a 'search_r1:' section in the --custom-config-path YAML), "
            f"got {type(override).__name__}: {override!r}"
        )
        raise ConfigError([problem])
    if getattr(args, "use_wandb", False) and (problems := uploaded_secret_problems(override)):
        raise ConfigError(problems)
    config = SearchR1Config.checked(_merge(SEARCH_R1_CONFIGS, override))
    # A key from the environment is checked now too, not at the first search (the settings check the others).
    section, env = (config.google, SERPER_API_KEY_ENV) if config.search_backend == "google" else (config.local, RETRIEVAL_API_KEY_ENV)
    resolve_secret(section.api_key, section.api_key_file, env)
    return config.model_dump()


# ---------------------------------------------------------------------------- search


def passages_to_string(results: list[dict]) -> str:
    """Search-R1's passage list: ``Doc {i}(Title: {title}) {text}`` a line, i from 1."""
    lines = []
    for i, item in enumerate(results, start=1):
        title, _, text = item["document"]["contents"].partition("\n")
        lines.append(f"Doc {i}(Title: {title}) {text}\n")
    return "".join(lines)


def parse_action(turn_text: str, pattern: re.Pattern = _ACTION) -> tuple[str | None, str]:
    """Search-R1's action parser: the first ``<search>``/``<answer>`` pair, content stripped
    (``pattern``: with the page tool's tag too, ``_actions``)."""
    match = pattern.search(turn_text)
    return (match.group(1), match.group(2).strip()) if match else (None, "")


async def search(query: str, config: Mapping[str, Any]) -> list[dict]:
    """Run one query on the configured backend; raises ``RequestFailed`` when it cannot.

    With ``search_r1.search_db.path`` the search goes through the search database (recorded,
    replayed, paid once, budgeted: ``search_r1_slime.search_db``), which may raise ``BudgetSpent``
    (a ``RequestFailed``) or, in strict replay, ``ReplayError``.
    """
    if config["search_db"]["path"] is None:
        return await _ask_backend(query, config, None)
    from search_r1_slime import search_db

    return await search_db.search(query, config, functools.partial(_ask_backend, query, config))


async def _ask_backend(query: str, config: Mapping[str, Any], ledger: Any) -> list[dict]:
    if config["search_backend"] == "local":
        from local_search_server import local_search

        return await local_search(query=query, top_k=config["topk"], timeout=config["search_timeout"], **config["local"])
    from google_search_server import google_search

    paid = {} if ledger is None else {"ledger": ledger}  # search_db's paid-search cache and budget
    links = {"with_links": True} if config["access"]["enabled"] else {}
    return await google_search(query=query, top_k=config["topk"], timeout=config["search_timeout"], **paid, **config["google"], **links)


def _actions(config: Mapping[str, Any]) -> tuple[re.Pattern, tuple[str, ...]]:
    """The action pattern and the stop strings: Search-R1's two, plus the page tool's when it is on."""
    if not config["access"]["enabled"]:
        return _ACTION, _ACTION_STOPS
    tag = config["access"]["tag"]
    return re.compile(rf"<(search|answer|{re.escape(tag)})>(.*?)</\1>", re.DOTALL), (*_ACTION_STOPS, f"</{tag}>")


async def _information_body(query: str, config: Mapping[str, Any], metrics: dict[str, Any]) -> str:
    if not query:  # parse_action stripped it: blank
        metrics["empty_queries"] += 1
        return EMPTY_QUERY_TEXT
    metrics["searches"] += 1
    slot = SearchSlot(config["search_concurrency"], config["search_slot_timeout"])
    try:
        async with slot:
            started = time.monotonic()
            try:
                results = await search(query, config)
            finally:
                metrics["search_latencies"].append(time.monotonic() - started)
    except BudgetSpent:
        metrics["search_failures"] += 1
        return BUDGET_SPENT_TEXT  # search_db logged why, once per process
    except RequestFailed as exc:
        metrics["search_failures"] += 1
        metrics["search_slot_timeouts"] += int(isinstance(exc, SlotTimeout))
        logger.warning("search for %r failed; the model is told so: %s", query, exc)
        return SEARCH_FAILED_TEXT
    finally:
        metrics["search_slot_waits"].append(slot.waited)
    show = page_tool.passages_with_links if config["access"]["enabled"] else passages_to_string
    body = show(results).strip()
    if not body:
        metrics["search_no_results"] += 1
    return body or NO_RESULTS_TEXT


def _client_stats() -> dict[str, int]:
    """The local client's counters of this event loop; a rollout's share is read off the samples'
    first and last snapshots (search_r1_slime.rollout_metrics)."""
    from local_search_server import local_search_stats

    return dataclasses.asdict(local_search_stats())


def _db_stats(config: Mapping[str, Any]) -> dict[str, float]:
    """The search database's counters of this process (search_r1_slime.rollout_metrics reads a
    rollout's window of them, as of the local client's)."""
    from search_r1_slime.search_db import stats

    return stats(config["search_db"])


# ---------------------------------------------------------------------------- tokens


@functools.lru_cache(maxsize=None)
def load_tokenizer(path: str):
    """The tokenizer of ``args.hf_checkpoint``, loaded once per path."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _encode_observation(tokenizer, text: str) -> list[int]:
    # Retrieved text is data: a passage holding "<|im_end|>" or "<think>" must reach the model as
    # those characters, never as the control token that ends its turn or opens its reasoning.
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]) if text else []


def _decode_whole_chars(tokenizer, ids: list[int]) -> tuple[list[int], str]:
    # A cut can split a multi-byte character across tokens; drop the dangling piece rather than
    # showing the model a replacement character.
    while ids:
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):
            return ids, text
        ids = ids[:-1]
    return [], ""


def fit_observation(tokenizer, head: str, body: str, tail: str, limit: int) -> tuple[list[int], str, bool]:
    """Tokenise ``head + body + tail`` within ``limit`` tokens; return (ids, text, was_cut).

    A cut shortens the body and keeps ``head``/``tail``, so an ``<information>`` block stays
    closed and the format check still sees the structure the model was shown (Search-R1 cut the
    token sequence blindly, dropping ``</information>``). When even the wrapper does not fit,
    the whole text is cut: the budget is then spent and the trajectory ends TRUNCATED anyway.
    """
    text = head + body + tail
    ids = _encode_observation(tokenizer, text)
    if len(ids) <= limit:
        return ids, text, False
    head_ids, tail_ids = _encode_observation(tokenizer, head), _encode_observation(tokenizer, tail)
    room = limit - len(head_ids) - len(tail_ids)
    if room < 0:
        cut_ids, cut_text = _decode_whole_chars(tokenizer, ids[:limit])
        return cut_ids, cut_text, True
    body_ids, body_text = _decode_whole_chars(tokenizer, _encode_observation(tokenizer, body)[:room])
    return head_ids + body_ids + tail_ids, head + body_text + tail, True


def _append(sample: Any, args: Any, ids: list[int], log_probs: list[float] | None, text: str, meta_info: dict | None) -> None:
    """Append response tokens: model tokens come with log-probs (trainable), observations without."""
    if hasattr(sample, "append_response_tokens"):
        # Newer slime: its helper also keeps its own bookkeeping aligned (top-p replay spans,
        # weight versions, prefix-cache statistics). It sets the status from finish_reason; the
        # turn loop sets the final status after it.
        sample.append_response_tokens(
            args, tokens=ids, log_probs=log_probs, trainable=log_probs is not None, meta_info=meta_info, text=text
        )
        return
    previous = sample.response_length
    sample.tokens = list(sample.tokens) + ids
    sample.response += text
    sample.response_length = previous + len(ids)
    sample.loss_mask = (sample.loss_mask if sample.loss_mask is not None else [1] * previous) + [
        1 if log_probs is not None else 0
    ] * len(ids)
    earlier = sample.rollout_log_probs if sample.rollout_log_probs is not None else [0.0] * previous
    sample.rollout_log_probs = list(earlier) + (log_probs if log_probs is not None else [0.0] * len(ids))
    if meta_info is not None and "routed_experts" in meta_info:
        _keep_routed_experts(args, sample, meta_info)


# ---------------------------------------------------------------------------- the turn loop


def _new_metrics() -> dict[str, Any]:
    return {
        "turns": 0, "searches": 0, "search_failures": 0, "invalid_actions": 0, "obs_truncated": 0,
        # Search-R1's action accounting: every finished model turn is an action.
        "actions": 0, "valid_actions": 0, "answered": False,
        "search_no_results": 0, "search_latencies": [],
        # Blank <search> queries (answered with EMPTY_QUERY_TEXT, not searched), and the seconds
        # each search waited for a search_concurrency slot (not part of its latency).
        "empty_queries": 0, "search_slot_waits": [], "search_slot_timeouts": 0,
    }


def _count_action(metrics: dict[str, Any], action: str | None) -> None:
    """One finished model turn: valid when it holds a search or answer pair."""
    metrics["actions"] += 1
    metrics["valid_actions"] += int(action is not None)
    metrics["answered"] = metrics["answered"] or action == "answer"


def _start(args: Any, sample: Any, tokenizer, evaluation: bool) -> dict[str, Any]:
    """Prepare the sample for generation; return its metrics (continued on a partial rollout)."""
    Status = type(sample).Status
    resuming = (
        not evaluation
        and getattr(args, "partial_rollout", False)
        and sample.status == Status.ABORTED
        and sample.response_length > 0
        and "search_r1" in (sample.metadata or {})
    )
    if resuming:
        if sample.rollout_log_probs is None:
            # return_logprob is off, so the last call dropped the log-probs. slime's helper refuses
            # to append trainable log-probs after a response without any; zeros stand in while we
            # run and are dropped again at the end.
            sample.rollout_log_probs = [0.0] * sample.response_length
        return sample.metadata["search_r1"]
    if not isinstance(sample.prompt, str):
        raise TypeError(
            f"sample.prompt must be a string, got {type(sample.prompt).__name__}: run slime with "
            "--apply-chat-template so the chat messages are rendered to text"
        )
    # As slime's own generate: ids already on the sample are the prompt (without any response
    # left over from an earlier, discarded attempt); otherwise tokenise the rendered prompt.
    if sample.tokens:
        prompt_ids = list(sample.tokens[: len(sample.tokens) - sample.response_length])
    else:
        prompt_ids = _encode(tokenizer, sample.prompt)
    sample.tokens = prompt_ids
    sample.response = ""
    sample.response_length = 0
    sample.loss_mask = []
    sample.rollout_log_probs = None
    # What newer slime keeps per response token or turn, left over from an aborted attempt that
    # starts again from the prompt (fully async training requeues aborted samples).
    for name in ("rollout_top_p_token_ids", "rollout_top_p_token_offsets", "rollout_routed_experts"):
        if hasattr(sample, name):
            setattr(sample, name, None)
    if hasattr(sample, "weight_versions"):
        sample.weight_versions = []
    if sample.metadata is None:
        sample.metadata = {}
    sample.metadata["search_r1"] = metrics = _new_metrics()
    return metrics


def _stop_list(stop: str | list[str] | None, actions: tuple[str, ...] = _ACTION_STOPS) -> list[str]:
    caller = [stop] if isinstance(stop, str) else list(stop or [])
    return list(dict.fromkeys([*caller, *actions]))


def _room(config: Mapping[str, Any], budget: int, sample: Any) -> int:
    """Tokens the trajectory may still add: the response budget left, and the context budget
    left when ``max_context_tokens`` is set."""
    room = budget - sample.response_length
    if config["max_context_tokens"] is not None:
        room = min(room, config["max_context_tokens"] - len(sample.tokens))
    return room


def _deep_mode(config: Mapping[str, Any]) -> bool:
    """The page tool or a long-horizon budget is on (docs/deep_research.md); off, the turn loop is Search-R1's."""
    return bool(
        config["access"]["enabled"] or config["max_tool_calls"] or config["answer_reserve_tokens"] or config["max_context_tokens"]
    )


def _routing_headers(args: Any, sample: Any) -> dict[str, str] | None:
    """slime's session routing (``--router-policy consistent_hashing``): every turn of a trajectory
    carries its session id, so the router sends it to the engine whose radix cache holds its prefix."""
    if getattr(args, "router_policy", None) != "consistent_hashing":
        return None
    if not hasattr(sample, "session_id"):
        raise ValueError(
            "--router-policy consistent_hashing needs slime's session ids (Sample.session_id, slime 2026-04 "
            "or later); this slime has none: update slime or choose another router policy"
        )
    if not sample.session_id:
        # slime names the samples of a rollout group; its evaluation calls generate without one.
        sample.session_id = str(uuid.uuid4())
    return {"X-SMG-Routing-Key": sample.session_id}


def _keep_routed_experts(args: Any, sample: Any, meta: dict) -> None:
    """Routed-expert replay on a slime without ``append_response_tokens``: keep SGLang's
    ``routed_experts`` (base64 int32, one row per token of the whole sequence but the last: each
    turn's prefill routes the observations before it) as that slime's own generate does, shaped
    (rows, num_layers, moe_router_topk)."""
    import numpy as np

    experts = np.frombuffer(base64.b64decode(meta["routed_experts"]), dtype=np.int32)
    rows = len(sample.tokens) - 1
    if experts.size != rows * args.num_layers * args.moe_router_topk:
        raise ValueError(
            f"SGLang returned {experts.size} routed-expert ids, expected {rows} tokens x {args.num_layers} layers "
            f"x {args.moe_router_topk} experts"
        )
    sample.rollout_routed_experts = experts.reshape(rows, args.num_layers, args.moe_router_topk)


def _cover_trailing_observation(sample: Any) -> None:
    """One routed-expert row per token but the last, as slime's trainer requires. When the trajectory
    ends on an observation (the budget ran out), the engine never read it nor the model token before
    it, so they have no rows. No trained token's log-prob depends on their routing (each is computed
    from the positions before it, and nothing follows them), so they repeat the last routed row: a
    valid routing, as slime's trainer pads the final token of every sequence."""
    import numpy as np

    experts = getattr(sample, "rollout_routed_experts", None)
    if experts is None:
        return
    missing = len(sample.tokens) - 1 - len(experts)
    if missing > 0:
        experts = np.asarray(experts)
        sample.rollout_routed_experts = np.concatenate([experts, np.repeat(experts[-1:], missing, axis=0)])


async def _generate_turn(
    url: str, sample: Any, sampling_params: dict[str, Any], max_new_tokens: int, headers: dict | None, replay: bool
) -> dict:
    payload = {
        "input_ids": list(sample.tokens),
        "sampling_params": {**sampling_params, "max_new_tokens": max_new_tokens},
        # Always: the token ids come from output_token_logprobs, whatever return_logprob says.
        "return_logprob": True,
    }
    if replay:
        payload["return_routed_experts"] = True
    output = await request_json("POST", url, json=payload, headers=headers, policy=_GENERATE_POLICY, what="generate")
    meta = output.get("meta_info") if isinstance(output, dict) else None
    if not isinstance(meta, dict) or "output_token_logprobs" not in meta or "finish_reason" not in meta:
        raise RequestFailed(f"/generate answered without meta_info.output_token_logprobs/finish_reason: {str(output)[:200]!r}")
    return output


def _fail(sample: Any, exc: RequestFailed, evaluation: bool) -> None:
    Status = type(sample).Status
    if not hasattr(Status, "FAILED"):
        raise RequestFailed(f"Search-R1 rollout cannot continue, SGLang /generate failed: {exc}", status=exc.status) from exc
    # Newer slime: keep what was generated, mark the sample FAILED and keep it out of the loss
    # (an evaluation has no loss: its failed sample is simply not a valid answer).
    if evaluation:
        logger.error("SGLang /generate failed; evaluation sample marked FAILED: %s", exc)
    else:
        logger.error("SGLang /generate failed; sample marked FAILED and removed from the loss: %s", exc)
    sample.status = Status.FAILED
    sample.remove_sample = True
    sample.metadata["search_r1"]["generate_error"] = str(exc)


async def _deep_round(
    sample: Any, args: Any, tokenizer, config: Mapping[str, Any], budget: int, metrics: dict[str, Any], action: str | None, content: str
) -> None:
    """One tool round in deep-research mode (docs/deep_research.md): run the action, append its
    observation, and decide whether the next turn is the final one (then say so to the model).

    With ``answer_reserve_tokens`` > 0 the tokens left above the reserve bound each observation,
    and the round in which at most the largest observation cap is left above it is the last tool
    round. ``max_tool_calls`` ends tool use after that many searches and page reads.
    """
    reserve = config["answer_reserve_tokens"]
    tool = action not in (None, "search", "answer")  # the page tool's tag
    cap = config["access"]["max_obs_tokens"] if tool else config["max_obs_tokens"]
    largest = max(config["max_obs_tokens"], config["access"]["max_obs_tokens"] if config["access"]["enabled"] else 0)
    room = _room(config, budget, sample)
    limit = min(cap, room - reserve)
    if reserve and room - reserve <= largest:
        metrics["final_turn"] = "tokens"
    if action is None:
        metrics["invalid_actions"] += 1
    else:  # a search or a page read: "answer" ended the trajectory before this round
        metrics["tool_calls"] += 1
        if config["max_tool_calls"] is not None and metrics["tool_calls"] >= config["max_tool_calls"]:
            metrics["final_turn"] = metrics["final_turn"] or "tool_calls"
    notice = page_tool.FINAL_TURN_NOTICE if metrics["final_turn"] else ""
    head, tail = (INFORMATION_HEAD, notice + INFORMATION_TAIL) if action is not None else ("", notice)
    frame = len(_encode_observation(tokenizer, head)) + len(_encode_observation(tokenizer, tail))
    if notice:  # the model must read it, in a closed block (the format check): out of the reserve if need be
        limit = min(room, max(limit, frame))
    if limit <= 0:  # the budget is spent
        return
    if action is None:
        body = INVALID_ACTION_MESSAGE
    elif limit <= frame:  # not one token of a result would be shown: the tool is not run
        body = ""
    elif action == "search":
        body = await _information_body(content, config, metrics)
    else:
        body = await page_tool.access_body(content, config, metrics)
    # A cut shortens the body: the notice and the closing tag stay.
    obs_ids, obs_text, cut = fit_observation(tokenizer, head, body, tail, limit)
    metrics["obs_truncated"] += int(cut)
    page_tool.note_seen(metrics, obs_text)
    _append(sample, args, obs_ids, None, obs_text, None)


async def generate(args: Any, sample: Any, sampling_params: dict[str, Any], evaluation: bool = False) -> Any:
    """slime's custom generate hook: run one Search-R1 trajectory for ``sample``.

    ``evaluation``: slime's evaluation (``--eval-interval``); ``sampling_params`` then hold the
    dataset's settings (``--eval-config``: its ``max_response_len`` is the budget, its ``stop``
    strings are added to ours) and an evaluation sample always starts from its prompt.
    """
    config = resolve_config(args)
    Status = type(sample).Status
    tokenizer = load_tokenizer(args.hf_checkpoint)
    budget = sampling_params.get("max_new_tokens")
    if not isinstance(budget, int) or budget < 1:
        raise ValueError(f"sampling_params['max_new_tokens'] must be a positive int (the response budget), got {budget!r}")
    replay = getattr(args, "use_rollout_routing_replay", False)
    headers = _routing_headers(args, sample)
    metrics = _start(args, sample, tokenizer, evaluation)
    deep = _deep_mode(config)
    if config["access"]["enabled"]:
        page_tool.require_extractor()
    if deep and "tool_calls" not in metrics:
        metrics.update(page_tool.new_metrics())
    pattern, action_stops = _actions(config)
    turn_text = metrics.pop("partial_turn_text", "")
    local_backend = config["search_backend"] == "local"
    if local_backend:
        metrics["client_stats_start"] = _client_stats()
    uses_search_db = config["search_db"]["path"] is not None
    if uses_search_db:
        metrics["db_stats_start"] = _db_stats(config)
    # no_stop_trim: the closing tag must stay in the text (slime sets it too); a trimmed text would
    # hide the action from the parser while its tokens are still in the response.
    request_params = {**sampling_params, "stop": _stop_list(sampling_params.get("stop"), action_stops), "no_stop_trim": True}
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate"

    while True:
        # An abort can land on the very token that closed the action; that turn is then complete.
        if parse_action(turn_text, pattern)[0] is None:
            remaining = _room(config, budget, sample)
            if remaining <= 0:
                sample.status = Status.TRUNCATED
                break
            try:
                output = await _generate_turn(url, sample, request_params, remaining, headers, replay)
            except RequestFailed as exc:
                _fail(sample, exc, evaluation)
                break
            meta = output["meta_info"]
            ids = [int(item[1]) for item in meta["output_token_logprobs"]]
            log_probs = [float(item[0]) for item in meta["output_token_logprobs"]]
            _append(sample, args, ids, log_probs, output["text"], meta)
            turn_text += output["text"]
            finish = meta["finish_reason"]["type"]
            if finish == "abort":
                # Kept so a partial-rollout continuation parses the whole turn, not just its tail.
                metrics["partial_turn_text"] = turn_text
                sample.status = Status.ABORTED
                break
            if finish == "length":
                _count_action(metrics, parse_action(turn_text, pattern)[0])
                sample.status = Status.TRUNCATED
                break
        action, content = parse_action(turn_text, pattern)
        _count_action(metrics, action)
        turn_text = ""
        if action == "answer" or metrics["turns"] >= config["max_turns"] or (deep and metrics["final_turn"]):
            sample.status = Status.COMPLETED
            break
        metrics["turns"] += 1
        if deep:
            await _deep_round(sample, args, tokenizer, config, budget, metrics, action, content)
            continue
        if action == "search":
            head, body, tail = INFORMATION_HEAD, await _information_body(content, config, metrics), INFORMATION_TAIL
        else:
            metrics["invalid_actions"] += 1
            head, body, tail = "", INVALID_ACTION_MESSAGE, ""
        limit = min(config["max_obs_tokens"], budget - sample.response_length)
        obs_ids, obs_text, cut = fit_observation(tokenizer, head, body, tail, limit)
        metrics["obs_truncated"] += int(cut)
        _append(sample, args, obs_ids, None, obs_text, None)

    if local_backend:
        metrics["client_stats_end"] = _client_stats()
    if uses_search_db:
        metrics["db_stats_end"] = _db_stats(config)
    if replay:
        _cover_trailing_observation(sample)
    if not config["return_logprob"]:
        sample.rollout_log_probs = None
    return sample


# The thinking block a chat template writes at the end of the generation prompt (Qwen3 with
# enable_thinking=False): the model's turn continues after it.
_PROMPT_THINKING_BLOCK = re.compile(r"<think>\s*</think>\s*$")


def _assistant_turn(sample: Any) -> str:
    """What the format check reads. Search-R1 checked the whole assistant turn; its Qwen2.5 template
    writes none of it, so there that is the response alone. A template that ends the prompt with an
    empty thinking block writes the turn's first thinking in the model's place: the check reads the
    turn from that block on, so a first action without thinking is well formed. A model that still
    opens its own thinking first, as Search-R1's prompt asks ("reasoning inside <think> and
    </think> first"), wrote the turn's thinking itself, and the template's empty block before it is
    not read: the response alone is checked."""
    block = _PROMPT_THINKING_BLOCK.search(sample.prompt) if isinstance(sample.prompt, str) else None
    if block is None or sample.response.lstrip().startswith("<think>"):
        return sample.response
    return block.group(0) + sample.response


async def reward_func(args: Any, sample: Any, **kwargs: Any) -> float:
    """slime's custom reward hook: the configured reward of the response (``search_r1_slime.rewards``;
    by default Search-R1's EM score with ``format_score``). Its terms are kept for the rollout log."""
    from search_r1_slime.rewards import score_sample

    config = resolve_config(args)
    try:
        targets = sample.label["ground_truth"]["target"]
    except (TypeError, KeyError) as exc:
        raise ValueError(
            "sample.label must look like {'ground_truth': {'target': [answers...]}} (run slime with "
            f"--label-key reward_model on Search-R1 data), got {sample.label!r}"
        ) from exc
    # A page read has a search's structure (search_r1_slime.page_tool.as_search_structure).
    text = page_tool.as_search_structure(_assistant_turn(sample), config)
    return float((await score_sample(sample, text, targets, config)).total)
