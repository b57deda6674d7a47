"""The reward of a trajectory, term by term, as configured in ``search_r1`` (docs/rewards.md).

    total = outcome + format_penalty + search_penalty + invalid_action_penalty
            + no_search_penalty + no_answer_penalty

* ``answer``: the score of the model's answer under ``search_r1.reward``: ``em`` (Search-R1's
  ``em_check``), ``subem`` (cover EM, FlashRAG's ``Sub_ExactMatch``), ``f1`` (FlashRAG's token F1),
  or ``judge`` (1 or 0 from the LLM judge, ``search_r1_slime.judge``; when the judge gives no
  verdict the answer is scored by ``em`` instead and ``judge_unjudged`` is 1, so the fallback is
  counted, never hidden).
* ``outcome``: Search-R1 v0.3's case analysis (``qa_em.search_r1_case_score``) on that score, with
  ``format_score`` (Search-R1's ``structure_format_score``), ``final_format_score`` and
  ``retrieval_score``; with ``format_gate`` it counts only in a valid format (ASearcher's F1 x
  format).
* ``format_penalty``: ``-format_penalty`` in a broken format (R1-Searcher subtracts 2).
* ``search_penalty``: ``-search_penalty`` per search the model wrote (run or not), and
  ``invalid_action_penalty``: ``-invalid_action_penalty`` per invalid action (ours: linear terms
  a user can weigh; not a published formula).
* ``no_search_penalty`` / ``no_answer_penalty``: ``-no_search_penalty`` once when the model wrote no
  search, ``-no_answer_penalty`` once when no model turn answered: Search-R1++'s action-level
  penalties (its F1+ reward, F1 with 0.1 each; Xu et al., arXiv 2602.19526), which keep F1 training
  from learning not to answer.

Each term, with ``format_valid`` and ``retrieval_hit``, is kept per trajectory
(``sample.metadata["search_r1_reward"]``) and logged per rollout as ``search_r1/reward/<term>``.
The defaults (``em``, ``format_score`` 0.2, everything else 0) give exactly the reward before
these options existed.

What is read: the response (after the prompt's trailing thinking block, as ``reward_func``
passes it), the gold answers, and the trajectory's counts from ``generate_with_search`` (without
them, what the response shows). The answer is the last ``<answer>`` of the response only when a
model turn answered: the invalid-action message the model was shown holds ``<answer> and
</answer>``, which Search-R1's extraction reads as the answer "and" (harmless for EM, partial
credit under F1 for a gold answer with "and" in it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from qa_em import (
    em_check,
    extract_solution,
    f1_score,
    is_retrieval_correct,
    is_valid_sequence,
    search_r1_case_score,
    subem_check,
    without_information_blocks,
)
from search_r1_slime.judge import judge_answer

RULE_SCORES = {"em": em_check, "subem": subem_check, "f1": f1_score}
_SEARCH = re.compile(r"<search>.*?</search>", re.DOTALL)
# The question of a Search-R1 prompt (``prepare_data.make_prompt``): after its last "Question:",
# to the end of that line or the chat template's next special token.
_QUESTION = re.compile(r"Question:\s*(.*?)\s*(?:\n|<\||$)")


@dataclass(frozen=True)
class RewardTerms:
    """One trajectory's reward, term by term (docs/rewards.md defines each)."""

    answer: float
    format_valid: float
    retrieval_hit: float
    outcome: float
    format_penalty: float
    search_penalty: float
    invalid_action_penalty: float
    no_search_penalty: float
    no_answer_penalty: float
    total: float
    judge_unjudged: float | None = None  # only under reward: judge

    def logged(self) -> dict[str, float]:
        """The terms as logged (``judge_unjudged`` only where the judge was asked)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


def question_of(prompt: str) -> str:
    """The question a Search-R1 prompt asks (the whole prompt when it has no "Question:")."""
    matches = _QUESTION.findall(prompt)
    return matches[-1] if matches and matches[-1] else prompt


def searches_written(response: str) -> int:
    """The searches the model wrote in ``response``: its ``<search>`` blocks outside the
    observations and the invalid-action message (which names "<search> and </search>" to the model)."""
    from generate_with_search import INVALID_ACTION_MESSAGE

    return len(_SEARCH.findall(without_information_blocks(response.replace(INVALID_ACTION_MESSAGE, ""))))


async def score(
    response: str,
    gold_answers: Sequence[str],
    config: Mapping[str, Any],
    *,
    answered: bool | None = None,
    searches: int | None = None,
    invalid_actions: int = 0,
    question: str = "",
) -> RewardTerms:
    """The reward terms of ``response`` under ``config`` (a resolved ``search_r1`` configuration).

    ``answered``: whether a model turn gave an answer (``generate_with_search``'s count; None: take
    the response's last ``<answer>`` as Search-R1 does). ``searches``: the search actions the model
    wrote (None: the ``<search>`` blocks of the response); ``invalid_actions``: its turns without a
    search or answer (Search-R1's actions that are not valid actions). ``question``: what the
    judge is told was asked.
    """
    valid, _ = is_valid_sequence(response)
    answer = extract_solution(response) if answered is not False else None
    if searches is None:
        searches = searches_written(response)
    retrieved = valid and is_retrieval_correct(response, gold_answers)
    unjudged = None
    if answer is None:
        answer_score = None
    elif config["reward"] == "judge":
        verdict = await judge_answer(question, gold_answers, answer, config["judge"])
        unjudged = float(not verdict.judged)
        answer_score = float(verdict.correct) if verdict.judged else float(em_check(answer, gold_answers))
    else:
        answer_score = float(RULE_SCORES[config["reward"]](answer, gold_answers))
    outcome = search_r1_case_score(
        answer_score, valid, retrieved, format_score=config["format_score"],
        final_format_score=config["final_format_score"], retrieval_score=config["retrieval_score"],
    )
    if config["format_gate"] and not valid:
        outcome = 0.0
    terms = {
        "format_penalty": 0.0 if valid else -config["format_penalty"],
        "search_penalty": -config["search_penalty"] * searches,
        "invalid_action_penalty": -config["invalid_action_penalty"] * invalid_actions,
        "no_search_penalty": -config["no_search_penalty"] if searches == 0 else 0.0,
        "no_answer_penalty": -config["no_answer_penalty"] if answer is None else 0.0,
    }
    return RewardTerms(
        answer=answer_score or 0.0, format_valid=float(valid), retrieval_hit=float(retrieved), outcome=outcome,
        **terms, total=outcome + sum(terms.values()),
        judge_unjudged=unjudged if config["reward"] == "judge" else None,
    )


async def score_sample(sample: Any, text: str, gold_answers: Sequence[str], config: Mapping[str, Any]) -> RewardTerms:
    """``score`` of a slime sample whose format check reads ``text``; its terms are kept in
    ``sample.metadata["search_r1_reward"]`` for the rollout log."""
    counts = (sample.metadata or {}).get("search_r1") if isinstance(sample.metadata, dict) else None
    terms = await score(
        text, gold_answers, config,
        answered=None if counts is None else bool(counts["answered"]),
        # Every valid action is a search except the one answer that ends a trajectory.
        searches=None if counts is None else counts["valid_actions"] - bool(counts["answered"]),
        invalid_actions=0 if counts is None else counts["actions"] - counts["valid_actions"],
        question=question_of(sample.prompt) if isinstance(sample.prompt, str) else "",
    )
    if sample.metadata is None:
        sample.metadata = {}
    sample.metadata["search_r1_reward"] = terms.logged()
    return terms
