"""An LLM judge: is the model's answer the gold answer, in other words? Asked of a model the user
serves at an OpenAI-compatible ``/v1/chat/completions`` (SGLang's, vLLM's, or a hosted one).

Exact match misses answers that are right in other words ("JFK" for "John F. Kennedy"); systems
that train or evaluate search agents then ask a model (SkyRL's ``stem_llm_judge``, ASearcher's
evaluation). This is the plugin's client of such a model. It is used by ``search_r1.reward: judge``
(``search_r1_slime.rewards``) and by ``search-r1-evaluate --judge-url``.

Public API (stable; docs/rewards.md, "The LLM judge"):

* ``JudgeItem(question, gold_answers, answer)``: one answer to judge.
* ``Verdict(correct, reason)``: ``correct`` is True or False, or None when the judge gave no
  usable verdict (it timed out, failed, or answered something ``parse_verdicts`` refuses);
  ``reason`` then says why. Never a silent 0 or 1: callers count unjudged answers as such.
* ``await judge_answers(items, settings) -> list[Verdict]`` and
  ``await judge_answer(question, gold_answers, answer, settings) -> Verdict``: ``settings`` is a
  ``search_r1_slime.settings.JudgeSettings`` or the mapping of a ``search_r1.judge`` section
  (checked like the configuration; ``ConfigError`` names a bad key). An answer that is None or
  blank is judged incorrect without asking.
* ``judge_stats() -> JudgeStats``: the running event loop's counters (answers asked, served from
  the cache or from an identical request in flight, requests formed, HTTP attempts, unjudged).
* ``PROMPT_TEMPLATE``, ``render_prompt(items, template)``, ``parse_verdicts(text, n)``: the prompt
  and the strict parse of the reply, for tests and for users who write their own template.

How it asks:

* **Batched.** Answers that arrive within ``batch_wait`` seconds of each other go out together,
  up to ``max_items_per_request`` in one prompt, numbered; the judge must reply with exactly one
  line ``<number>: correct`` or ``<number>: incorrect`` per answer and nothing else (a reasoning
  model's ``<think>...</think>`` before them is dropped). Any other reply is refused whole, and
  the answers of a refused batch are asked again one per request, so one confusing item costs only
  its own verdict.
* **Cached.** The same question, gold answers and answer (with the same judge, model and
  template) are judged once: identical answers in flight share one request, and finished verdicts
  sit in a bounded LRU (``search_cache.SearchCache``). A failure is never cached.
* **Within a deadline.** Every request goes through ``http_client.request_json``: retries of
  refused or dropped connections, timeouts, 429 and 5xx (``Retry-After`` honoured) until the
  verdict's ``timeout``, batching wait included. Then the verdict is None with the reason.
* **Secret.** With ``api_key`` (or ``api_key_file``, or ``JUDGE_API_KEY`` in the environment) every
  request carries ``Authorization: Bearer <key>``; the key is scrubbed from every message and log.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from search_r1_slime.batching import Coalescer
from search_r1_slime.http_client import PerLoop, RequestFailed, RetryPolicy, proxy_kwargs, request_json, scrub
from search_r1_slime.search_cache import CacheStats, SearchCache
from search_r1_slime.settings import JUDGE_API_KEY_ENV, JudgeSettings, SearchR1Config, resolve_secret

PROMPT_TEMPLATE = """You are grading answers to questions. For each numbered item below you get a question, \
its gold answers (any one of them is right) and a predicted answer. The predicted answer is correct when it \
means the same thing as one of the gold answers, even in other words, spelling or format; it is incorrect when \
it names something else, is less specific in a way that changes the answer, hedges between several answers, or \
is missing.

{items}

Reply with one line per item, in order, exactly in the form "<number>: correct" or "<number>: incorrect", \
and nothing else."""

_ITEM = "Item {index}\nQuestion: {question}\nGold answers: {gold}\nPredicted answer: {answer}"
_VERDICT_LINE = re.compile(r"\s*(\d+)\s*:\s*(correct|incorrect)\s*\.?\s*", re.IGNORECASE)
_THINKING = re.compile(r"^.*</think>", re.DOTALL)


@dataclass(frozen=True)
class JudgeItem:
    """One answer to judge. ``gold_answers``: the data set's answers, any of which is right."""

    question: str
    gold_answers: tuple[str, ...] | Iterable[str] | str
    answer: str | None

    def __post_init__(self) -> None:
        # A tuple whatever was passed (a list from a label, one string), so items hash as cache keys.
        golds = (self.gold_answers,) if isinstance(self.gold_answers, str) else tuple(self.gold_answers)
        object.__setattr__(self, "gold_answers", golds)


@dataclass(frozen=True)
class Verdict:
    """``correct``: the judge's verdict, or None when there is none (``reason`` says why)."""

    correct: bool | None
    reason: str = ""

    @property
    def judged(self) -> bool:
        return self.correct is not None


@dataclass
class JudgeStats(CacheStats):
    """``CacheStats`` (answers sent, served from the cache, shared with an identical answer in
    flight) plus requests formed, HTTP attempts sent, and answers left without a verdict."""

    requests: int = 0
    http_requests: int = 0
    unjudged: int = 0


def render_prompt(items: Sequence[JudgeItem], template: str | None = None) -> str:
    """The prompt asking for ``items``' verdicts: ``template`` (ours when None) with ``{items}``
    replaced by the numbered items (plain replacement: other braces in a template are kept as written)."""
    rendered = "\n\n".join(
        _ITEM.format(index=i, question=item.question, gold=" | ".join(item.gold_answers), answer=item.answer)
        for i, item in enumerate(items, start=1)
    )
    return (template or PROMPT_TEMPLATE).replace("{items}", rendered)


def parse_verdicts(text: str, n: int) -> list[bool]:
    """The ``n`` verdicts of a reply, in item order; ``ValueError`` saying what is wrong with any
    reply that is not exactly one ``<number>: correct|incorrect`` line for each of 1..n (blank
    lines and a leading ``<think>...</think>`` aside)."""
    lines = [line for line in _THINKING.sub("", text).splitlines() if line.strip()]
    verdicts: dict[int, bool] = {}
    for line in lines:
        match = _VERDICT_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"not a verdict line: {line.strip()[:80]!r}")
        index = int(match.group(1))
        if index in verdicts or not 1 <= index <= n:
            raise ValueError(f"item {index} is {'judged twice' if index in verdicts else f'not among 1..{n}'}")
        verdicts[index] = match.group(2).lower() == "correct"
    if len(verdicts) != n:
        missing = sorted(set(range(1, n + 1)) - set(verdicts))
        raise ValueError(f"no verdict for item(s) {missing}")
    return [verdicts[i] for i in range(1, n + 1)]


def _checked(settings: JudgeSettings | Mapping[str, Any]) -> JudgeSettings:
    if isinstance(settings, JudgeSettings):
        return settings
    return SearchR1Config.checked({"judge": dict(settings)}).judge


@dataclass(frozen=True)
class _Route:
    """Everything that shapes a judge request; answers with equal routes share requests."""

    url: str
    model: str
    template: str | None
    max_items: int
    batch_wait: float
    max_tokens: int
    timeout: float
    attempt_timeout: float
    max_attempts: int | None
    proxy: str | None
    api_key: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        return () if self.api_key is None else (self.api_key,)


@dataclass
class _LoopState:
    cache: SearchCache = field(default_factory=SearchCache)
    coalescers: dict[_Route, Coalescer[JudgeItem, bool]] = field(default_factory=dict)
    requests: int = 0
    http_requests: int = 0
    unjudged: int = 0

    def count_attempt(self, url: str) -> None:
        self.http_requests += 1


_STATE: PerLoop[_LoopState] = PerLoop(_LoopState)


def judge_stats() -> JudgeStats:
    """The running event loop's counters."""
    state = _STATE.get()
    return JudgeStats(
        **vars(state.cache.stats), requests=state.requests, http_requests=state.http_requests, unjudged=state.unjudged
    )


async def judge_answer(
    question: str, gold_answers: Iterable[str] | str, answer: str | None, settings: JudgeSettings | Mapping[str, Any]
) -> Verdict:
    """The judge's verdict on one answer (see ``judge_answers``)."""
    (verdict,) = await judge_answers([JudgeItem(question, gold_answers, answer)], settings)
    return verdict


async def judge_answers(items: Sequence[JudgeItem], settings: JudgeSettings | Mapping[str, Any]) -> list[Verdict]:
    """The judge's verdicts on ``items``, in order. Never raises for the judge's failures: an
    answer without a verdict gets ``Verdict(None, reason)``. ``ConfigError`` for bad settings,
    ``ValueError`` when ``settings.url`` is unset."""
    judge = _checked(settings)
    if judge.url is None:
        raise ValueError("the judge needs search_r1.judge.url (its /v1/chat/completions URL)")
    route = _Route(
        judge.url, judge.model, judge.prompt_template, judge.max_items_per_request, judge.batch_wait, judge.max_tokens,
        judge.timeout, judge.attempt_timeout, judge.max_attempts, judge.proxy,
        resolve_secret(judge.api_key, judge.api_key_file, JUDGE_API_KEY_ENV),
    )
    state = _STATE.get()
    coalescer = state.coalescers.get(route)
    if coalescer is None:
        coalescer = state.coalescers[route] = Coalescer(
            functools.partial(_ask, route, state=state), max_items=route.max_items, wait=route.batch_wait,
            timeout=route.timeout, split=lambda exc: isinstance(exc, _Refused), what="judge", secrets=route.secrets,
        )
    return list(await asyncio.gather(*(_one(item, route, judge, coalescer, state) for item in items)))


async def _one(
    item: JudgeItem, route: _Route, judge: JudgeSettings, coalescer: Coalescer[JudgeItem, bool], state: _LoopState
) -> Verdict:
    if item.answer is None or not item.answer.strip():
        return Verdict(False, "no answer")
    # Never the key: verdicts do not depend on who asked.
    key = ("judge", route.url, route.model, route.template, item.question, item.gold_answers, item.answer)
    try:
        correct = await state.cache.get_or_run(
            key, lambda: coalescer.submit(item), use_cache=judge.cache, max_size=judge.cache_size
        )
    except RequestFailed as exc:
        state.unjudged += 1
        return Verdict(None, str(exc))
    return Verdict(correct)


async def _ask(route: _Route, items: list[JudgeItem], deadline: float, *, state: _LoopState) -> list[bool]:
    """One judge request for ``items`` before ``deadline`` (monotonic); their verdicts in order."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise RequestFailed("judge: no time was left for this request")
    state.requests += 1
    payload = {
        "model": route.model,
        "messages": [{"role": "user", "content": render_prompt(items, route.template)}],
        "temperature": 0,
        "max_tokens": route.max_tokens,
    }
    policy = RetryPolicy(max_attempts=route.max_attempts, deadline_s=left, attempt_timeout_s=route.attempt_timeout)
    headers = {} if route.api_key is None else {"Authorization": f"Bearer {route.api_key}"}
    try:
        body = await request_json(
            "POST", route.url, json=payload, headers=headers, policy=policy, what="judge", redact=route.secrets,
            on_attempt=state.count_attempt, **proxy_kwargs(route.proxy),
        )
    except RequestFailed as exc:
        if exc.status in (401, 403):
            raise RequestFailed(
                f"{exc}; the judge wants a key: set search_r1.judge.api_key_file to a file holding it, "
                f"or export {JUDGE_API_KEY_ENV}",
                status=exc.status,
            ) from None
        raise
    try:
        content = body["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"content is {type(content).__name__}")
    except (KeyError, IndexError, TypeError) as exc:
        raise _Refused(f"judge reply refused: no choices[0].message.content string ({exc}): {scrub(str(body), route.secrets)[:200]!r}") from None
    try:
        return parse_verdicts(content, len(items))
    except ValueError as exc:
        raise _Refused(f"judge reply refused: {exc}; reply began {scrub(content, route.secrets)[:200]!r}") from None


class _Refused(RequestFailed):
    """The judge answered, but not with a usable verdict for every item: the items of a batch
    are asked again one by one (``Coalescer``'s split)."""

