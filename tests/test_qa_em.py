"""Search-R1's EM reward on the response alone, with format_score applied."""

import pytest

from qa_em import (
    compute_score_em,
    em_check,
    extract_solution,
    f1_score,
    is_valid_sequence,
    normalize_answer,
    subem_check,
)

OBS = "\n\n<information>Doc 1(Title: \"Hamlet\") Hamlet is a tragedy by Shakespeare.</information>\n\n"
VALID_CORRECT = "<think> I know it. </think>\n<answer> William Shakespeare </answer>"
VALID_WITH_SEARCH = "<think> a </think>\n<search> q </search>" + OBS + "<think> b </think>\n<answer> The Shakespeare! </answer>"
VALID_WRONG = "<think> guess </think>\n<answer> Marlowe </answer>"
BROKEN_CORRECT = "Easy. <answer> William Shakespeare </answer>"  # no <think>, text outside tags
BROKEN_WRONG = "<answer> Marlowe </answer> and more"
NO_ANSWER_ENDS_ON_SEARCH = "<think> a </think>\n<search> q </search>"
NO_ANSWER_AT_ALL = "I do not know."
GOLD = {"target": ["William Shakespeare", "Shakespeare"]}


def test_normalize_answer_is_squad_style():
    assert normalize_answer("  The  Quick, brown FOX!  ") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # only whole-word articles go



def test_f1_against_hand_computed_cases():
    # 1 of 4 predicted words is right and it is the whole answer: P = 1/4, R = 1, F1 = 2PR/(P+R) = 0.4.
    assert f1_score("William Shakespeare wrote Hamlet", "Shakespeare") == 0.4
    # The best gold answer counts; normalisation drops "the" and punctuation first.
    assert f1_score("William Shakespeare wrote Hamlet", ["Marlowe", "The Shakespeare!"]) == 0.4
    # A repeated word overlaps only as often as the gold answer has it: P = 1/3, R = 1, F1 = 0.5.
    assert f1_score("Paris paris France", "Paris") == 0.5
    # P = 2/2, R = 2/3: F1 = 0.8.
    assert f1_score("Franklin Roosevelt", "Franklin D. Roosevelt") == 0.8
    assert f1_score("The William Shakespeare.", ["William Shakespeare"]) == 1.0
    assert f1_score("Lyon", ["Paris"]) == 0.0
    assert f1_score("", ["Paris"]) == 0.0


def flashrag_sub_exact_match(prediction: str, golden_answers: list[str]) -> int:
    """FlashRAG's Sub_ExactMatch (flashrag/evaluator/metrics.py): the normalised gold answer is a
    substring of the normalised prediction, for any gold answer."""
    return int(any(normalize_answer(gold) in normalize_answer(prediction) for gold in golden_answers))


@pytest.mark.parametrize("prediction, golden_answers, covered", [
    ("William Shakespeare wrote it", ["Shakespeare"], 1),
    ("It was the Beatles, of course", ["Queen", "The Beatles"], 1),
    # Where whole words and substrings differ, cover EM is the substring: FlashRAG's definition.
    ("start", ["art"], 1),
    ("Russia", ["U.S."], 1),  # "us" is in "russia"
    ("Shakespeare, William", ["William Shakespeare"], 0),
    ("Franklin Roosevelt", ["Franklin D. Roosevelt"], 0),
    ("anything", ["", "the"], 1),  # a gold answer that normalises to "" is in every prediction
    ("", ["Paris"], 0),
])
def test_cover_em_is_flashrags_containment(prediction, golden_answers, covered):
    assert subem_check(prediction, golden_answers) == flashrag_sub_exact_match(prediction, golden_answers) == covered


def test_f1_gives_yes_no_answers_no_partial_credit_as_flashrag_does():
    # FlashRAG's F1_Score: when either side normalises to yes/no/noanswer, they must be equal.
    assert f1_score("yes, both are", ["yes"]) == 0.0  # token overlap alone would give 0.5
    assert f1_score("yes", ["no", "yes"]) == 1.0
    assert f1_score("no", ["yes"]) == 0.0
    assert f1_score("Yes.", "yes") == 1.0


def test_em_and_subem():
    assert em_check("the Shakespeare.", ["Marlowe", "shakespeare"]) == 1
    assert em_check("William Shakespeare wrote it", "Shakespeare") == 0
    assert subem_check("William Shakespeare wrote it", "Shakespeare") == 1
    assert subem_check("Marlowe", ["Shakespeare"]) == 0


@pytest.mark.parametrize(
    "response, valid, reason",
    [
        (VALID_CORRECT, True, "Valid sequence format"),
        (VALID_WITH_SEARCH, True, "Valid sequence format"),
        ("\n  " + VALID_CORRECT + "\n", True, "Valid sequence format"),
        (BROKEN_CORRECT, False, "Unexpected content 'Easy.' between tags (state: start)"),
        (BROKEN_WRONG, False, "Unexpected tag <answer> in state start"),
        (NO_ANSWER_ENDS_ON_SEARCH, False, "Incomplete sequence, ended in state after_search"),
        ("<think> a </think><answer> x", False, "Mismatch in answer tags: 1 opening vs 0 closing tags"),
        ("<think> a </think>\n<search> q </search><think> b </think><answer> x </answer>", False, "Unexpected tag <think> in state after_search"),
        ("<think> a </think>\n<search> q </search>" + OBS + "<answer> x </answer>", False, "Unexpected tag <answer> in state information"),
        (VALID_CORRECT + " trailing", False, "Unexpected content in state end"),
        # The prompt's assistant marker is not part of the response: the machine starts right away.
        ("<|im_start|>assistant\n" + VALID_CORRECT, False, "Unexpected content '<|im_start|>assistant' between tags (state: start)"),
    ],
)
def test_is_valid_sequence_follows_search_r1s_state_machine_from_the_response_start(response, valid, reason):
    assert is_valid_sequence(response) == (valid, reason)


def test_extract_solution_takes_the_last_answer_of_the_response():
    assert extract_solution(VALID_CORRECT) == "William Shakespeare"
    assert extract_solution("<answer> a </answer> <answer> b </answer>") == "b"
    assert extract_solution(NO_ANSWER_AT_ALL) is None


# Search-R1's reward table, with format_score f: correct+valid 1, correct+broken 1-f,
# wrong/missing+valid f, wrong/missing+broken 0.
@pytest.mark.parametrize(
    "response, f, expected",
    [
        (VALID_CORRECT, 0.2, 1.0),
        (VALID_WITH_SEARCH, 0.2, 1.0),
        (BROKEN_CORRECT, 0.2, 0.8),
        (VALID_WRONG, 0.2, 0.2),
        (BROKEN_WRONG, 0.2, 0.0),
        (NO_ANSWER_ENDS_ON_SEARCH, 0.2, 0.0),
        (NO_ANSWER_AT_ALL, 0.2, 0.0),
        (VALID_CORRECT, 0.0, 1.0),
        (BROKEN_CORRECT, 0.0, 1.0),
        (VALID_WRONG, 0.0, 0.0),
        (BROKEN_CORRECT, 0.5, 0.5),
        (VALID_WRONG, 0.5, 0.5),
    ],
)
def test_reward_table(response, f, expected):
    assert compute_score_em(response, GOLD, format_score=f) == pytest.approx(expected)


def test_gold_answers_may_be_given_directly():
    assert compute_score_em(VALID_CORRECT, ["Shakespeare", "William Shakespeare"]) == 1.0
    assert compute_score_em(VALID_CORRECT, "William Shakespeare") == 1.0


def test_a_single_answer_in_the_response_counts():
    # Upstream needed two <answer> matches in prompt + response; a response has just one.
    assert compute_score_em("<think> x </think>\n<answer> Shakespeare </answer>", GOLD) == 1.0
