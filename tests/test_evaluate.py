"""evaluate.py end to end: its command line against loopback SGLang and retrieval stand-ins, with
scripted model answers; the printed table and the JSONL must follow from the script exactly."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from search_r1_slime import evaluate, prepare_data
from tests.fakes.retriever import FakeRetriever, doc
from tests.fakes.sglang import FakeSGLangPerPrompt, Turn

REPO = Path(__file__).resolve().parent.parent


# (data_source, question, gold answers, the model's scripted turns, the EM the table must show)
CASES = [
    ("nq", "who wrote hamlet", ["William Shakespeare"], [
        Turn("<think> I should look it up. </think>\n<search> who wrote hamlet </search>"),
        Turn("<think> The play is by Shakespeare. </think>\n<answer> William Shakespeare </answer>"),
    ], 1.0),
    # Well-formed but wrong: pure EM gives 0, not the training format_score.
    ("nq", "what is the capital of france", ["Paris"], [
        Turn("<think> I know this. </think>\n<answer> Lyon </answer>"),
    ], 0.0),
    ("triviaqa", "who was the man behind the chipmunks", ["David Seville"], [], 0.0),  # SGLang fails
    ("hotpotqa", "which magazine was started first", ["Arthur's Magazine"], [
        Turn("<think> Search both. </think>\n<search> arthurs magazine first issue </search>"),
        Turn("<think> 1844 is earlier. </think>\n<answer> Arthur's Magazine </answer>"),
    ], 1.0),
    # Right answer without <think>: the format is broken, EM still counts it.
    ("bamboogle", "who was president when the hoover dam opened", ["Franklin D. Roosevelt"], [
        Turn("<answer> Franklin D. Roosevelt </answer>"),
    ], 1.0),
]
CORPUS = {
    "who wrote hamlet": [doc("1", "Hamlet", "Hamlet is a tragedy written by William Shakespeare.")],
    "arthurs magazine first issue": [doc("7", "Arthur's Magazine", "Arthur's Magazine was first published in 1844.")],
}
EXPECTED_TABLE = """\
|       |    NQ | TriviaQA | PopQA | HotpotQA | 2Wiki | Musique | Bamboogle |   Avg |
|-------|------:|---------:|------:|---------:|------:|--------:|----------:|------:|
| EM    | 0.500 |    0.000 |     - |    1.000 |     - |       - |     1.000 | 0.625 |
| n     |     2 |        1 |     - |        1 |     - |       - |         1 |     5 |"""


def write_test_parquet(path: Path) -> None:
    rows = [
        prepare_data.make_row({"id": f"q{i}", "question": question, "golden_answers": answers}, source, "test", i)
        for i, (source, question, answers, _, _) in enumerate(CASES)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=prepare_data.SCHEMA), path)


def chat_prompt(tokenizer, question: str) -> str:
    content = prepare_data.make_prompt(prepare_data.normalize_question(question))
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


async def test_command_line_scores_the_scripted_answers_in_the_papers_layout(tokenizer, tokenizer_dir, tmp_path):
    data = tmp_path / "test.parquet"
    write_test_parquet(data)
    scripts = {chat_prompt(tokenizer, question): turns for _, question, _, turns, _ in CASES}
    output = tmp_path / "out/trajectories.jsonl"

    async with FakeSGLangPerPrompt(tokenizer, scripts) as sglang, FakeRetriever(CORPUS) as retriever:
        triviaqa = sglang.fakes[chat_prompt(tokenizer, CASES[2][1])]
        triviaqa.failures.append(400)  # a request SGLang rejects: not retried, the sample fails
        config = tmp_path / "search.yaml"
        config.write_text(f"search_r1:\n  max_turns: 2\n  local:\n    search_url: {retriever.search_url}\n")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "search_r1_slime.evaluate",
            "--data", str(data), "--hf-checkpoint", tokenizer_dir, "--sglang-url", sglang.url(),
            "--config", str(config), "--output", str(output), "--max-concurrency", "2", "--no-progress",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, stderr.decode()
        assert all(fake.script_done for fake in sglang.fakes.values())
        assert sorted(retriever.queries_received) == sorted(CORPUS)

    assert stdout.decode().splitlines()[-4:] == EXPECTED_TABLE.splitlines()
    assert "WARNING: 1 trajectories failed" in stderr.decode()

    records = sorted((json.loads(line) for line in output.read_text().splitlines()), key=lambda r: r["index"])
    assert [r["reward"] for r in records] == [case[4] for case in CASES]
    assert [r["data_source"] for r in records] == [case[0] for case in CASES]
    assert [r["answer"] for r in records] == ["William Shakespeare", "Lyon", None, "Arthur's Magazine", "Franklin D. Roosevelt"]
    assert [r["searches"] for r in records] == [1, 0, 0, 1, 0]
    assert [r["status"] for r in records] == ["completed", "completed", "failed", "completed", "completed"]
    first = records[0]
    assert first["prompt"] == chat_prompt(tokenizer, "who wrote hamlet")
    assert first["response"] == (
        "<think> I should look it up. </think>\n<search> who wrote hamlet </search>"
        "\n\n<information>Doc 1(Title: \"Hamlet\") Hamlet is a tragedy written by William Shakespeare.</information>\n\n"
        "<think> The play is by Shakespeare. </think>\n<answer> William Shakespeare </answer>"
    )
    assert first["golden_answers"] == ["William Shakespeare"]
    assert first["question"] == "who wrote hamlet?"
    assert "400" in records[2]["error"]


def test_refuses_to_start_when_the_retriever_is_down(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    config = tmp_path / "search.yaml"
    config.write_text(f"search_r1:\n  local:\n    search_url: http://127.0.0.1:{closed_port}/retrieve\n")
    data = tmp_path / "test.parquet"
    write_test_parquet(data)
    output = tmp_path / "out.jsonl"

    code = evaluate.main(["--data", str(data), "--hf-checkpoint", str(tmp_path), "--config", str(config),
                          "--output", str(output)])

    assert code == 1
    assert f"ERROR: retrieval server http://127.0.0.1:{closed_port}/health is not answering" in capsys.readouterr().err
    assert not output.exists()


def test_table_lists_data_sets_outside_the_paper_after_its_seven():
    em = evaluate.exact_match_by_source([
        {"data_source": "strategyqa", "reward": 1.0},
        {"data_source": "popqa", "reward": 0.0},
        {"data_source": "popqa", "reward": 1.0},
    ])
    assert list(em) == ["popqa", "strategyqa"]
    header, _, scores, counts = evaluate.format_table(em).splitlines()
    assert header.split("|")[1:-1][-3:] == [" Bamboogle ", " strategyqa ", "   Avg "]
    assert scores.split("|")[-3:-1] == [" 1.000 ".rjust(12), " 0.750 "]
    assert counts.split("|")[-2] == "     3 "
