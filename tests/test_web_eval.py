"""search-r1-evaluate --questions: deep-research evaluation on a GAIA-style question file, end to end
against loopback SGLang, serper.dev, web-page and judge stand-ins; Avg@k and Pass@k by hand."""

from __future__ import annotations

import json

import pytest

from search_r1_slime import prepare_data
from search_r1_slime.web_eval import format_web_table, read_questions, web_scores
from tests.fakes.chat_judge import FakeJudge
from tests.fakes.pages import Page, PageServer
from tests.fakes.real_pages import NEWS
from tests.fakes.serper import FakeSerper, organic
from tests.fakes.sglang import FakeSGLangPerPrompt, Turn
from tests.test_evaluate import run_evaluate

KEY = "sk-test-web-eval"
BRIDGE = "How much will the new bridge over the Alder River cost?"
TUNNEL = "What did the opponents of the Alder bridge ask for instead?"


def record(index: int, correct: bool | None, **counts) -> dict:
    values = dict(turns=0, tool_calls=0, searches=0, page_reads=0, pages_fetched=0)
    return {"index": index, "data_source": "gaia", "correct": correct, "answer": "x", **values, **counts}


def test_avg_and_pass_at_k_by_hand():
    # Question 0: 2 of 4 samples right; question 1: none right, one of them unjudged.
    records = [record(0, c) for c in (True, False, False, True)] + [record(1, c) for c in (False, False, False, None)]
    (scores,) = web_scores(records).values()
    assert scores.avg_at_k == (2 / 4 + 0 / 4) / 2 and scores.pass_at_k == (1 + 0) / 2
    assert (scores.questions, scores.trajectories, scores.unjudged) == (2, 8, 1)


def test_gaia_style_keys_csv_and_a_missing_answer(tmp_path):
    path = tmp_path / "frames.tsv"
    path.write_text("Prompt\tAnswer\nWho wrote Hamlet?\tWilliam Shakespeare\n")
    assert read_questions(path, "Prompt", "Answer", None, None) == [
        {"question": "Who wrote Hamlet?", "golden_answers": ["William Shakespeare"], "data_source": "frames"}
    ]
    path = tmp_path / "gaia.jsonl"
    path.write_text(json.dumps({"Question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"row 1 has no 'Final answer' answer \(set --answer-key\)"):
        read_questions(path, "Question", "Final answer", None, None)


async def test_command_line_judges_a_deep_research_run(tokenizer, tokenizer_dir, tmp_path):
    questions = tmp_path / "gaia.jsonl"
    questions.write_text("".join(json.dumps({"Question": q, "Final answer": a}) + "\n" for q, a in ((BRIDGE, "410 million dollars"), (TUNNEL, "a tunnel"))))

    def chat(question: str) -> str:
        content = prepare_data.make_deep_research_prompt(question)
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)

    async with PageServer({"/news": Page(NEWS.html.encode("utf-8"))}) as pages, FakeJudge(
        {"410 million dollars": ["$410 million"]}
    ) as judge:
        news = pages.url("/news")
        async with FakeSerper({"alder bridge cost": [organic("Bridge vote", news, "The council voted to approve the new bridge across the river")]}, api_key=KEY) as serper:
            scripts = {
                chat(BRIDGE): [
                    Turn("<think> Search. </think>\n<search> alder bridge cost </search>"),
                    Turn(f"<think> Read it. </think>\n<access> {news} </access>"),
                    Turn("<think> It says 410 million. </think>\n<answer> $410 million </answer>"),
                ],
                chat(TUNNEL): [Turn("<think> I guess. </think>\n<answer> a bridge </answer>")],
            }
            async with FakeSGLangPerPrompt(tokenizer, scripts) as sglang:
                config = tmp_path / "deep.yaml"
                config.write_text(
                    "search_r1:\n  max_turns: 8\n  search_backend: google\n"
                    f"  google: {{api_key: {KEY}, endpoint: '{serper.endpoint}', max_attempts: 2}}\n"
                    "  access: {enabled: true, allow_private_pages: true}\n"
                    f"  judge: {{url: '{judge.endpoint}'}}\n"
                )
                output = tmp_path / "gaia_out.jsonl"
                code, stdout, stderr = await run_evaluate(
                    "--questions", str(questions), "--question-key", "Question", "--answer-key", "Final answer",
                    "--hf-checkpoint", tokenizer_dir, "--sglang-url", sglang.url(), "--config", str(config),
                    "--output", str(output), "--max-response-len", "3000", "--no-progress",
                )
    assert code == 0, stderr.decode()
    expected = format_web_table(web_scores([
        record(0, True, turns=2, tool_calls=2, searches=1, page_reads=1, pages_fetched=1), record(1, False),
    ]), 1)
    assert stdout.decode().splitlines()[1:] == expected.splitlines()
    assert expected.splitlines()[2] == (
        "| gaia     | 2 | 0.500 |  0.500 |        0 |   1.0 |        1.0 |      0.5 |        0.5 |            1 |             1 |              2 |"
    )
    first, second = sorted(map(json.loads, output.read_text().splitlines()), key=lambda r: r["index"])
    assert (first["answer"], first["correct"], second["answer"], second["correct"]) == ("$410 million", True, "a bridge", False)
    assert pages.fetched == {"/news": 1} and len(serper.requests) == 1
    summary = json.loads((tmp_path / "gaia_out.summary.json").read_text())
    assert summary["per_source"]["gaia"]["avg_at_k"] == 0.5 and summary["per_source"]["gaia"]["judge_verdicts"] == 2


def test_questions_without_a_judge_is_one_line(tokenizer_dir, tmp_path, capsys):
    from search_r1_slime import evaluate

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    assert evaluate.main(["--questions", str(questions), "--hf-checkpoint", tokenizer_dir, "--sglang-url", "http://127.0.0.1:1"]) == 1
    assert capsys.readouterr().err == "ERROR: --questions is scored by the LLM judge: pass --judge-url or set search_r1.judge.url in the --config YAML\n"
