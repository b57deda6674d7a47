"""The reward options (search_r1_slime/rewards.py, docs/rewards.md), each against its source's
formula written out here: Search-R1 v0.3's compute_score_em, FlashRAG's F1 and cover EM, ASearcher's
F1 x format, R1-Searcher's format penalty, Search-R1++'s action-level penalties, our action
penalties, and the LLM judge."""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest

from qa_em import compute_score_em
from search_r1_slime.http_client import close_shared_session
from search_r1_slime.prepare_data import make_prompt
from search_r1_slime.rewards import question_of, score
from search_r1_slime.settings import ConfigError, SearchR1Config
from tests.fakes.chat_judge import FakeJudge
from tests.test_qa_em import flashrag_sub_exact_match

# ---------------------------------------------------------------------------- Search-R1 v0.3, re-derived

# Search-R1 read the prompt and the response together: its chat-rendered prompt (Qwen2.5's template).
UPSTREAM_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    + make_prompt("who wrote hamlet?") + "<|im_end|>\n<|im_start|>assistant\n"
)
_NOT_A_TAG = r"(?:(?!</?(?:think|search|information|answer)>).)*"
# The tag order its state machine accepts, as one grammar: think, (search, information, think)*, answer.
_UPSTREAM_GRAMMAR = re.compile(
    rf"\s*<think>{_NOT_A_TAG}</think>\s*"
    rf"(?:<search>{_NOT_A_TAG}</search>\s*<information>{_NOT_A_TAG}</information>\s*<think>{_NOT_A_TAG}</think>\s*)*"
    rf"<answer>{_NOT_A_TAG}</answer>\s*",
    re.DOTALL,
)


def upstream_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def upstream_compute_score_em(solution_str, targets, structure_format_score, final_format_score, retrieval_score, score=1.0):
    """verl/utils/reward_score/qa_em_format.py, compute_score_em (Search-R1 a14dc3a), written out:
    the format is checked after the assistant marker, the answer is the last of two or more
    <answer> matches, retrieval counts a gold answer inside an <information> block."""
    marker = re.search(r"<\|im_start\|>assistant\s*", solution_str)
    valid = marker is not None and _UPSTREAM_GRAMMAR.fullmatch(solution_str[marker.end():]) is not None
    answers = re.findall(r"<answer>(.*?)</answer>", solution_str, re.DOTALL)
    answer = answers[-1].strip() if len(answers) >= 2 else None
    blocks = [b.strip() for b in re.findall(r"<information>(.*?)</information>", solution_str, re.DOTALL)]
    retrieved = valid and any(upstream_normalize(g) in upstream_normalize(b) for b in blocks for g in targets)
    structure = structure_format_score + retrieval_score if retrieved else structure_format_score
    if answer is None:
        return structure if valid else 0
    if any(upstream_normalize(answer) == upstream_normalize(g) for g in targets):
        return score if valid else score - structure_format_score
    return structure if valid else final_format_score


GOLDS = [["William Shakespeare", "Shakespeare"], ["Paris"], ["1962"]]
ANSWERS = ["William Shakespeare", "the shakespeare!", "SHAKESPEARE", "Paris.", "1962", "Marlowe", "William", "", "London, 1962"]
PASSAGES = ["Hamlet is a tragedy by William Shakespeare.", "Paris is the capital.", "In 1962, nothing.", "No such thing."]


def generated_response(rng: random.Random) -> str:
    """A response of Search-R1's shape, then perhaps broken: a tag dropped, text outside the tags,
    a second answer, an unclosed tag, tags out of order."""
    parts = [f"<think> {rng.choice(['I should search.', 'hmm', 'Let me think'])} </think>\n"]
    for _ in range(rng.randint(0, 3)):
        parts += [f"<search> {rng.choice(['hamlet', 'capital'])} </search>",
                  f"\n\n<information>Doc 1(Title: x) {rng.choice(PASSAGES)}</information>\n\n",
                  f"<think> {rng.choice(['ok', 'so'])} </think>\n"]
    parts.append(f"<answer> {rng.choice(ANSWERS)} </answer>")
    damage = rng.choice(["none", "none", "drop", "stray", "second_answer", "unclosed", "swap", "no_answer"])
    if damage == "drop":
        parts.pop(rng.randrange(len(parts)))
    elif damage == "stray":
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(["Easy. ", "\nI think ", "so "]))
    elif damage == "second_answer":
        parts.append(f"\n<answer> {rng.choice(ANSWERS)} </answer>")
    elif damage == "unclosed":
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(["<think> ", "<search> q", "</information>"]))
    elif damage == "swap" and len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        parts[i], parts[i + 1] = parts[i + 1], parts[i]
    elif damage == "no_answer":
        parts.pop()
    return rng.choice(["", " ", "\n"]) + "".join(parts)


def test_compute_score_em_is_search_r1s_on_many_generated_responses():
    rng = random.Random(20261203)
    seen = Counter()
    for _ in range(3000):
        response, targets = generated_response(rng), rng.choice(GOLDS)
        ours = compute_score_em(response, targets, format_score=0.2, final_format_score=0.1, retrieval_score=0.1)
        upstream = upstream_compute_score_em(UPSTREAM_PROMPT + response, targets, 0.2, 0.1, 0.1)
        if "<answer>" in response:
            assert ours == pytest.approx(upstream), response
        else:
            # The one difference (docs/rewards.md): upstream read the prompt too, whose example
            # "<answer> Beijing </answer>" became the wrong answer of a response without one.
            assert (ours, upstream) == (0.0, 0.1), response
        seen[round(ours, 9)] += 1
    # Every case of the analysis came up, often: right (1, or 1 - 0.2 in a broken format), wrong in
    # a valid format (0.2, + 0.1 when retrieved), wrong in a broken format (0.1), no answer (0).
    assert set(seen) == {1.0, 0.8, 0.3, 0.2, 0.1, 0.0} and min(seen.values()) >= 50, seen


# ---------------------------------------------------------------------------- each option on one trajectory

OBS = "\n\n<information>Doc 1(Title: \"Hamlet\") Hamlet is a tragedy by William Shakespeare.</information>\n\n"
VALID = "<think> a </think>\n<search> q </search>" + OBS + "<think> b </think>\n<answer> {} </answer>"
BROKEN = "Easy. <answer> {} </answer>"
GOLD = ["William Shakespeare"]


def flashrag_f1(prediction: str, golds: list[str]) -> float:
    """FlashRAG's F1_Score.token_level_scores (flashrag/evaluator/metrics.py), the best over golds."""
    best = 0.0
    for gold in golds:
        p, g = upstream_normalize(prediction), upstream_normalize(gold)
        if (p in ("yes", "no", "noanswer") or g in ("yes", "no", "noanswer")) and p != g:
            continue
        common = Counter(p.split()) & Counter(g.split())
        same = sum(common.values())
        if same:
            precision, recall = same / len(p.split()), same / len(g.split())
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def config(**settings) -> dict:
    return SearchR1Config.checked(settings).model_dump()


@pytest.mark.parametrize("answer", ["William Shakespeare", "Shakespeare, William", "William", "Shakespeare wrote it", "yes", "Marlowe"])
@pytest.mark.parametrize("shape", [VALID, BROKEN])
async def test_f1_and_cover_em_are_flashrags_with_the_format_terms_asked(answer, shape):
    response, valid = shape.format(answer), shape is VALID
    f1 = await score(response, GOLD, config(reward="f1", format_score=0))
    assert f1.answer == f1.outcome == f1.total == pytest.approx(flashrag_f1(answer, GOLD))
    # ASearcher: F1 x format; R1-Searcher: F1, 2 less in a broken format.
    asearcher = await score(response, GOLD, config(reward="f1", format_score=0, format_gate=True))
    assert asearcher.total == pytest.approx(flashrag_f1(answer, GOLD) * valid)
    r1_searcher = await score(response, GOLD, config(reward="f1", format_score=0, format_penalty=2))
    assert r1_searcher.total == pytest.approx(flashrag_f1(answer, GOLD) - 2 * (not valid))
    assert r1_searcher.format_penalty == -2 * (not valid) and r1_searcher.format_valid == valid
    subem = await score(response, GOLD, config(reward="subem"))
    covered = flashrag_sub_exact_match(answer, GOLD)
    assert subem.answer == covered
    # Cover EM is right/wrong, so Search-R1's case analysis applies with format_score 0.2.
    assert subem.total == pytest.approx({(1, True): 1.0, (1, False): 0.8, (0, True): 0.2, (0, False): 0.0}[covered, valid])


async def test_action_penalties_count_each_search_and_each_invalid_action():
    terms = await score(VALID.format("William Shakespeare"), GOLD, config(search_penalty=0.1, invalid_action_penalty=0.05),
                        answered=True, searches=3, invalid_actions=2)
    assert (terms.outcome, terms.search_penalty, terms.invalid_action_penalty) == (1.0, pytest.approx(-0.3), -0.1)
    assert terms.total == pytest.approx(1.0 - 0.3 - 0.1)


def search_r1_pp_f1_plus(f1: float, searched: bool, answered: bool) -> float:
    """Search-R1++'s F1+ (Xu et al., arXiv 2602.19526): F1 less 0.1 for a trajectory without a search
    action and 0.1 for one without an answer action."""
    return f1 - 0.1 * (not searched) - 0.1 * (not answered)


SEARCH_R1_PP = {"reward": "f1", "format_score": 0, "no_search_penalty": 0.1, "no_answer_penalty": 0.1}


@pytest.mark.parametrize("searches", [0, 1, 3])
@pytest.mark.parametrize("answer", ["William Shakespeare", "William", "Marlowe", None])
async def test_search_r1_pp_subtracts_a_tenth_for_no_search_and_a_tenth_for_no_answer(searches, answer):
    response = "<think> a </think>\n" + ("<search> q </search>" + OBS + "<think> b </think>\n") * searches
    response += "" if answer is None else f"<answer> {answer} </answer>"
    f1 = 0.0 if answer is None else flashrag_f1(answer, GOLD)
    expected = search_r1_pp_f1_plus(f1, searches > 0, answer is not None)
    # The counts as generate_with_search keeps them, then the response read alone (no counts).
    for counts in ({"answered": answer is not None, "searches": searches}, {}):
        terms = await score(response, GOLD, config(**SEARCH_R1_PP), **counts)
        assert terms.total == pytest.approx(expected), counts
        assert (terms.no_search_penalty, terms.no_answer_penalty) == (-0.1 * (searches == 0), -0.1 * (answer is None))
        assert terms.answer == pytest.approx(f1)


async def test_search_tags_the_model_did_not_write_are_no_search():
    from generate_with_search import INVALID_ACTION_MESSAGE

    # The message names "<search> and </search>"; read alone, the response still wrote no search.
    response = "I am not sure." + INVALID_ACTION_MESSAGE + "<think> x </think>\n<answer> William Shakespeare </answer>"
    terms = await score(response, GOLD, config(**SEARCH_R1_PP, search_penalty=0.05))
    assert (terms.no_search_penalty, terms.search_penalty, terms.total) == (-0.1, 0.0, pytest.approx(0.9))
    # A page about HTML's <search> element, in an observation, is no search of the model's either.
    markup = OBS.replace("Hamlet is", "Wrap a form in <search> form </search>. Hamlet is")
    response = "<think> a </think>\n<search> q </search>" + markup + "<think> b </think>\n<answer> William Shakespeare </answer>"
    terms = await score(response, GOLD, config(**SEARCH_R1_PP, search_penalty=0.05))
    assert (terms.no_search_penalty, terms.search_penalty, terms.total) == (0.0, -0.05, pytest.approx(0.95))


async def test_an_answer_only_the_invalid_action_message_holds_is_no_answer():
    from generate_with_search import INVALID_ACTION_MESSAGE

    response = "I am not sure." + INVALID_ACTION_MESSAGE + "<think> x </think>\n<search> q </search>"
    # Search-R1's extraction reads the message's "<answer> and </answer>": "and" would earn F1 credit.
    assert flashrag_f1("and", ["Romeo and Juliet"]) == 0.5
    terms = await score(response, ["Romeo and Juliet"], config(reward="f1", format_score=0), answered=False)
    assert (terms.answer, terms.total) == (0.0, 0.0)


def test_the_question_is_read_from_a_search_r1_prompt():
    assert question_of(UPSTREAM_PROMPT) == "who wrote hamlet?"
    assert question_of("Question: who wrote hamlet?<|im_end|>\n<|im_start|>assistant\n") == "who wrote hamlet?"
    assert question_of("no question marker") == "no question marker"


@pytest.mark.parametrize(
    "settings, problem",
    [
        ({"reward": "f1"}, "search_r1.reward f1 gives partial credit, so Search-R1's format terms would pay a partly right answer "
                           "less than a wrong one: set format_score (0.2) to 0"),
        ({"reward": "f1", "format_score": 0, "retrieval_score": 0.1}, "set retrieval_score (0.1) to 0"),
        ({"reward": "judge"}, "search_r1.reward judge needs search_r1.judge.url"),
        ({"reward": "exact"}, "search_r1.reward must be 'em', 'subem', 'f1' or 'judge', got 'exact'"),
        ({"search_penalty": -0.1}, "search_r1.search_penalty must be at least 0, got -0.1"),
        ({"no_answer_penalty": -0.1}, "search_r1.no_answer_penalty must be at least 0, got -0.1"),
        ({"no_search_penalty": "0.1x"}, "search_r1.no_search_penalty must be"),
        ({"final_format_score": 2}, "search_r1.final_format_score must be between 0 and 1, got 2"),
        ({"format_gate": "yes"}, "search_r1.format_gate must be bool, got str: 'yes'"),
    ],
)
def test_a_reward_setting_that_cannot_work_is_one_line(settings, problem):
    with pytest.raises(ConfigError) as info:
        SearchR1Config.checked(settings)
    assert len(info.value.problems) == 1 and problem in info.value.problems[0]


async def test_the_judge_scores_answers_em_misses_and_an_unjudged_answer_falls_back_to_em_counted():
    try:
        async with FakeJudge({"William Shakespeare": ["the bard"]}) as judge:
            settings = config(reward="judge", judge={"url": judge.endpoint, "batch_wait": 0.01})
            bard = await score(VALID.format("The Bard"), GOLD, settings, question="who wrote hamlet?")
            assert (bard.answer, bard.total, bard.judge_unjudged) == (1.0, 1.0, 0.0)
            assert judge.items(0) == [("who wrote hamlet?", GOLD, "The Bard")]
            judge.faults.extend([503] * 50)
            settings["judge"].update(timeout=1.0, attempt_timeout=0.2)
            # No verdict: the answer is scored by EM (right here), and the fallback is counted.
            exact = await score(VALID.format("William Shakespeare"), GOLD, settings, question="q")
            assert (exact.answer, exact.total, exact.judge_unjudged) == (1.0, 1.0, 1.0)
            assert "judge_unjudged" in exact.logged()
    finally:
        await close_shared_session()
    assert "judge_unjudged" not in (await score(VALID.format("x"), GOLD, config())).logged()
