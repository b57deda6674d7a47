"""Search-R1's exact-match reward (``verl/utils/reward_score/qa_em_format.py``), response-only.

Public names follow upstream. Two deliberate differences:

* Everything reads the model's **response alone**. Upstream scored ``prompt + response``, which
  made ``extract_solution`` demand two ``<answer>`` matches (the prompt's own example
  ``<answer> Beijing </answer>`` being the first) and picked that example up as the answer of a
  response that gave none. Here one answer in the response is enough, and the prompt never counts.
* ``compute_score_em`` is Search-R1 v0.3's whole score (``search_r1_case_score`` holds its case
  analysis). Its ``structure_format_score`` is our ``format_score`` (upstream also has a parameter
  named ``format_score`` that nothing reads, so its configured value was never applied): right
  answer + valid format = ``score``, right answer + broken format = ``score - format_score``; no
  or a wrong answer + valid format = ``format_score``, plus ``retrieval_score`` when a gold answer
  appears in an ``<information>`` block; a wrong answer + broken format = ``final_format_score``;
  no answer + broken format = 0. ``format_score=0`` (and the other two 0) is the paper's pure EM.

Format check (``is_valid_sequence``): upstream looked for ``<|im_start|>assistant`` and ran its
state machine on the text after it. The response is exactly that text (slime's prompt ends with
``<|im_start|>assistant\\n``), so the machine starts in its ``start`` state at the first character
of the response; there is no marker to find. Whitespace between tags is allowed, anything else
outside ``<think>``/``<search>``/``<information>``/``<answer>`` is not, and the sequence must be
``<think>`` → (``<search>`` → ``<information>`` → ``<think>``)* → ``<answer>`` and end there.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping

_TAGS = ("think", "search", "information", "answer")
_TAG_SPLIT = re.compile(r"(</?(?:think|search|information|answer)>)")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INFORMATION = re.compile(r"<information>(.*?)</information>", re.DOTALL)
_PUNCTUATION = frozenset(string.punctuation)
_YES_NO = frozenset({"yes", "no", "noanswer"})

# (state, tag) -> next state: upstream's transitions.
_TRANSITIONS: dict[tuple[str, str], str] = {
    ("start", "<think>"): "in_think",
    ("information", "<think>"): "in_think",
    ("in_think", "</think>"): "after_think",
    ("after_think", "<search>"): "in_search",
    ("in_search", "</search>"): "after_search",
    ("after_search", "<information>"): "in_information",
    ("in_information", "</information>"): "information",
    ("after_think", "<answer>"): "in_answer",
    ("in_answer", "</answer>"): "end",
}
_CONTENT_STATES = frozenset({"in_think", "in_search", "in_information", "in_answer"})
_BETWEEN_TAG_STATES = frozenset({"start", "after_think", "after_search", "information"})


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _as_list(golden_answers: str | Iterable[str]) -> list[str]:
    return [golden_answers] if isinstance(golden_answers, str) else list(golden_answers)


def em_check(prediction: str, golden_answers: str | Iterable[str]) -> int:
    """1 if the normalised prediction equals any normalised gold answer, else 0."""
    prediction = normalize_answer(prediction)
    return int(any(normalize_answer(gold) == prediction for gold in _as_list(golden_answers)))


def subem_check(prediction: str, golden_answers: str | Iterable[str]) -> int:
    """1 if any normalised gold answer is a substring of the normalised prediction, else 0.

    Cover EM, as FlashRAG's ``Sub_ExactMatch``: "William Shakespeare" covers "Shakespeare", and
    also "start" covers "art"; a gold answer that normalises to "" is in every prediction.
    """
    prediction = normalize_answer(prediction)
    return int(any(normalize_answer(gold) in prediction for gold in _as_list(golden_answers)))


def f1_score(prediction: str, golden_answers: str | Iterable[str]) -> float:
    """FlashRAG's token F1 (``F1_Score``) of the normalised prediction, the best over the gold answers.

    Tokens are the words of ``normalize_answer``; overlap counts repeated words as often as both
    sides have them. When either side is "yes", "no" or "noanswer" the two must be equal to score
    (HotpotQA's rule, which FlashRAG keeps). An empty prediction scores 0.
    """
    prediction = normalize_answer(prediction)
    predicted = prediction.split()
    best = 0.0
    for gold in map(normalize_answer, _as_list(golden_answers)):
        if prediction != gold and (prediction in _YES_NO or gold in _YES_NO):
            continue
        expected = gold.split()
        overlap = sum((Counter(predicted) & Counter(expected)).values())
        if overlap:
            precision, recall = overlap / len(predicted), overlap / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def is_valid_sequence(response: str) -> tuple[bool, str]:
    """Check the tag structure of a response; return (valid, reason)."""
    for tag in _TAGS:
        opened, closed = response.count(f"<{tag}>"), response.count(f"</{tag}>")
        if opened != closed:
            return False, f"Mismatch in {tag} tags: {opened} opening vs {closed} closing tags"
    state = "start"
    for part in _TAG_SPLIT.split(response):
        if not part.strip():
            continue
        if _TAG_SPLIT.fullmatch(part):
            next_state = _TRANSITIONS.get((state, part))
            if next_state is None:
                return False, f"Unexpected tag {part} in state {state}"
            state = next_state
        elif state in _BETWEEN_TAG_STATES:
            return False, f"Unexpected content {part.strip()!r} between tags (state: {state})"
        elif state not in _CONTENT_STATES:
            return False, f"Unexpected content in state {state}"
    if state != "end":
        return False, f"Incomplete sequence, ended in state {state}"
    return True, "Valid sequence format"


def extract_solution(response: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` in the response (stripped), or None."""
    matches = _ANSWER.findall(response)
    return matches[-1].strip() if matches else None


def extract_information_blocks(text: str) -> list[str]:
    """The contents of every ``<information>...</information>`` block, stripped."""
    return [block.strip() for block in _INFORMATION.findall(text)]


def without_information_blocks(text: str) -> str:
    """``text`` with every ``<information>...</information>`` block removed: what the model wrote."""
    return _INFORMATION.sub("", text)


def is_retrieval_correct(text: str, golden_answers: str | Iterable[str]) -> bool:
    """Whether a normalised gold answer is contained in a normalised ``<information>`` block."""
    blocks = [normalize_answer(block) for block in extract_information_blocks(text)]
    return any(normalize_answer(gold) in block for block in blocks for gold in _as_list(golden_answers))


def search_r1_case_score(
    answer_score: float | None,
    valid_format: bool,
    retrieval_correct: bool,
    *,
    format_score: float = 0.0,
    final_format_score: float = 0.0,
    retrieval_score: float = 0.0,
) -> float:
    """Search-R1 v0.3's case analysis (``compute_score_em``) over an answer's score.

    ``answer_score``: None without an answer, else the answer's score (``score`` or 0 for exact
    match); a positive score is a right answer. ``retrieval_correct`` counts only in a valid format,
    as upstream computes it only then.
    """
    structure = format_score + (retrieval_score if retrieval_correct else 0.0)
    if answer_score is None:
        return structure if valid_format else 0.0
    if answer_score > 0:
        return answer_score if valid_format else answer_score - format_score
    return structure if valid_format else final_format_score


def compute_score_em(
    solution_str: str,
    ground_truth: Mapping[str, str | Iterable[str]] | str | Iterable[str],
    format_score: float = 0.0,
    score: float = 1.0,
    final_format_score: float = 0.0,
    retrieval_score: float = 0.0,
) -> float:
    """Score a response against the gold answers (Search-R1 v0.3's ``compute_score_em``).

    ``solution_str`` is the response alone; ``ground_truth`` is either the data set's
    ``{"target": [...]}`` mapping or the answers themselves. ``format_score`` is upstream's
    ``structure_format_score``.
    """
    targets = ground_truth["target"] if isinstance(ground_truth, Mapping) else ground_truth
    valid_format, _ = is_valid_sequence(solution_str)
    answer = extract_solution(solution_str)
    return search_r1_case_score(
        None if answer is None else score * em_check(answer, targets),
        valid_format,
        valid_format and is_retrieval_correct(solution_str, targets),
        format_score=format_score,
        final_format_score=final_format_score,
        retrieval_score=retrieval_score,
    )
