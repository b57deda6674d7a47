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

Configuration: ``SEARCH_R1_CONFIGS`` below, overridden per run by a ``search_r1:`` mapping in
slime's ``--custom-config-path`` YAML (it arrives as ``args.search_r1``), merged at call time.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from search_r1_slime.http_client import PerLoop, RequestFailed, RetryPolicy, request_json
from search_r1_slime.settings import DEFAULTS, ConfigError, SearchR1Config, check_section_name

logger = logging.getLogger(__name__)

# Every key, its type, range and default is declared once, in search_r1_slime.settings
# (README "Configuration" explains each). Edit this dict or override it per run (see above).
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
# Per event loop: search_concurrency -> its semaphore (an asyncio primitive must not cross loops).
_SEMAPHORES: PerLoop[dict[int, asyncio.Semaphore]] = PerLoop(dict)


# ---------------------------------------------------------------------------- configuration


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        both_mappings = isinstance(merged.get(key), Mapping) and isinstance(value, Mapping)
        merged[key] = _merge(merged[key], value) if both_mappings else value
    return merged


def resolve_config(args: Any) -> dict[str, Any]:
    """``SEARCH_R1_CONFIGS`` with ``args.search_r1`` (from ``--custom-config-path``) merged over it.

    Raises ``ConfigError`` naming every unknown key and every bad value by its dotted name.
    """
    check_section_name(getattr(args, "__dict__", ()))  # slime sets each top-level YAML key as an attribute
    override = getattr(args, "search_r1", None) or {}
    if not isinstance(override, Mapping):
        problem = (
            f"search_r1 must be a mapping of settings (a 'search_r1:' section in the --custom-config-path YAML), "
            f"got {type(override).__name__}: {override!r}"
        )
        raise ConfigError([problem])
    return SearchR1Config.checked(_merge(SEARCH_R1_CONFIGS, override)).model_dump()


# ---------------------------------------------------------------------------- search


def passages_to_string(results: list[dict]) -> str:
    """Search-R1's passage list: ``Doc {i}(Title: {title}) {text}`` a line, i from 1."""
    lines = []
    for i, item in enumerate(results, start=1):
        title, _, text = item["document"]["contents"].partition("\n")
        lines.append(f"Doc {i}(Title: {title}) {text}\n")
    return "".join(lines)


def parse_action(turn_text: str) -> tuple[str | None, str]:
    """Search-R1's action parser: the first ``<search>``/``<answer>`` pair, content stripped."""
    match = _ACTION.search(turn_text)
    return (match.group(1), match.group(2).strip()) if match else (None, "")


def _search_semaphore(limit: int) -> asyncio.Semaphore:
    semaphores = _SEMAPHORES.get()
    if limit not in semaphores:
        semaphores[limit] = asyncio.Semaphore(limit)
    return semaphores[limit]


async def search(query: str, config: Mapping[str, Any]) -> list[dict]:
    """Run one query on the configured backend; raises ``RequestFailed`` when it cannot."""
    if config["search_backend"] == "local":
        from local_search_server import local_search

        return await local_search(query=query, top_k=config["topk"], timeout=config["search_timeout"], **config["local"])
    from google_search_server import google_search

    return await google_search(query=query, top_k=config["topk"], timeout=config["search_timeout"], **config["google"])


async def _information_body(query: str, config: Mapping[str, Any], metrics: dict[str, Any]) -> str:
    metrics["searches"] += 1
    started = time.monotonic()
    try:
        async with _search_semaphore(config["search_concurrency"]):
            results = await search(query, config)
    except RequestFailed as exc:
        metrics["search_failures"] += 1
        logger.warning("search for %r failed; the model is told so: %s", query, exc)
        return SEARCH_FAILED_TEXT
    finally:
        # What the trajectory waited, the wait for a search slot included.
        metrics["search_latencies"].append(time.monotonic() - started)
    body = passages_to_string(results).strip()
    if not body:
        metrics["search_no_results"] += 1
    return body or NO_RESULTS_TEXT


def _client_stats() -> dict[str, int]:
    """The local client's counters of this event loop; a rollout's share is read off the samples'
    first and last snapshots (search_r1_slime.rollout_metrics)."""
    from local_search_server import local_search_stats

    return dataclasses.asdict(local_search_stats())


# ---------------------------------------------------------------------------- tokens


@functools.lru_cache(maxsize=None)
def load_tokenizer(path: str):
    """The tokenizer of ``args.hf_checkpoint``, loaded once per path."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


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
    ids = _encode(tokenizer, text)
    if len(ids) <= limit:
        return ids, text, False
    head_ids, tail_ids = _encode(tokenizer, head), _encode(tokenizer, tail)
    room = limit - len(head_ids) - len(tail_ids)
    if room < 0:
        cut_ids, cut_text = _decode_whole_chars(tokenizer, ids[:limit])
        return cut_ids, cut_text, True
    body_ids, body_text = _decode_whole_chars(tokenizer, _encode(tokenizer, body)[:room])
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


# ---------------------------------------------------------------------------- the turn loop


def _new_metrics() -> dict[str, Any]:
    return {
        "turns": 0, "searches": 0, "search_failures": 0, "invalid_actions": 0, "obs_truncated": 0,
        # Search-R1's action accounting: every finished model turn is an action.
        "actions": 0, "valid_actions": 0, "answered": False,
        "search_no_results": 0, "search_latencies": [],
    }


def _count_action(metrics: dict[str, Any], action: str | None) -> None:
    """One finished model turn: valid when it holds a search or answer pair."""
    metrics["actions"] += 1
    metrics["valid_actions"] += int(action is not None)
    metrics["answered"] = metrics["answered"] or action == "answer"


def _start(args: Any, sample: Any, tokenizer) -> dict[str, Any]:
    """Prepare the sample for generation; return its metrics (continued on a partial rollout)."""
    Status = type(sample).Status
    resuming = (
        getattr(args, "partial_rollout", False)
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
    if sample.metadata is None:
        sample.metadata = {}
    sample.metadata["search_r1"] = metrics = _new_metrics()
    return metrics


def _stop_list(stop: str | list[str] | None) -> list[str]:
    caller = [stop] if isinstance(stop, str) else list(stop or [])
    return list(dict.fromkeys([*caller, *_ACTION_STOPS]))


async def _generate_turn(url: str, sample: Any, sampling_params: dict[str, Any], max_new_tokens: int) -> dict:
    payload = {
        "input_ids": list(sample.tokens),
        "sampling_params": {**sampling_params, "max_new_tokens": max_new_tokens},
        # Always: the token ids come from output_token_logprobs, whatever return_logprob says.
        "return_logprob": True,
    }
    output = await request_json("POST", url, json=payload, policy=_GENERATE_POLICY, what="generate")
    meta = output.get("meta_info") if isinstance(output, dict) else None
    if not isinstance(meta, dict) or "output_token_logprobs" not in meta or "finish_reason" not in meta:
        raise RequestFailed(f"/generate answered without meta_info.output_token_logprobs/finish_reason: {str(output)[:200]!r}")
    return output


def _fail(sample: Any, exc: RequestFailed) -> None:
    Status = type(sample).Status
    if not hasattr(Status, "FAILED"):
        raise RequestFailed(f"Search-R1 rollout cannot continue, SGLang /generate failed: {exc}", status=exc.status) from exc
    # Newer slime: keep what was generated, mark the sample FAILED and keep it out of the loss.
    logger.error("SGLang /generate failed; sample marked FAILED and removed from the loss: %s", exc)
    sample.status = Status.FAILED
    sample.remove_sample = True
    sample.metadata["search_r1"]["generate_error"] = str(exc)


async def generate(args: Any, sample: Any, sampling_params: dict[str, Any]) -> Any:
    """slime's custom generate hook: run one Search-R1 trajectory for ``sample``."""
    config = resolve_config(args)
    Status = type(sample).Status
    tokenizer = load_tokenizer(args.hf_checkpoint)
    budget = sampling_params.get("max_new_tokens")
    if not isinstance(budget, int) or budget < 1:
        raise ValueError(f"sampling_params['max_new_tokens'] must be a positive int (the response budget), got {budget!r}")
    metrics = _start(args, sample, tokenizer)
    turn_text = metrics.pop("partial_turn_text", "")
    local_backend = config["search_backend"] == "local"
    if local_backend:
        metrics["client_stats_start"] = _client_stats()
    # no_stop_trim: the closing tag must stay in the text (slime sets it too); a trimmed text would
    # hide the action from the parser while its tokens are still in the response.
    request_params = {**sampling_params, "stop": _stop_list(sampling_params.get("stop")), "no_stop_trim": True}
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate"

    while True:
        # An abort can land on the very token that closed the action; that turn is then complete.
        if parse_action(turn_text)[0] is None:
            remaining = budget - sample.response_length
            if remaining <= 0:
                sample.status = Status.TRUNCATED
                break
            try:
                output = await _generate_turn(url, sample, request_params, remaining)
            except RequestFailed as exc:
                _fail(sample, exc)
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
                _count_action(metrics, parse_action(turn_text)[0])
                sample.status = Status.TRUNCATED
                break
        action, content = parse_action(turn_text)
        _count_action(metrics, action)
        turn_text = ""
        if action == "answer" or metrics["turns"] >= config["max_turns"]:
            sample.status = Status.COMPLETED
            break
        metrics["turns"] += 1
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
    if not config["return_logprob"]:
        sample.rollout_log_probs = None
    return sample


async def reward_func(args: Any, sample: Any, **kwargs: Any) -> float:
    """slime's custom reward hook: Search-R1's EM score of the response, with ``format_score``."""
    from qa_em import compute_score_em

    config = resolve_config(args)
    try:
        targets = sample.label["ground_truth"]["target"]
    except (TypeError, KeyError) as exc:
        raise ValueError(
            "sample.label must look like {'ground_truth': {'target': [answers...]}} (run slime with "
            f"--label-key reward_model on Search-R1 data), got {sample.label!r}"
        ) from exc
    return float(compute_score_em(sample.response, targets, format_score=config["format_score"]))
