"""evaluate.py end to end: its command line against loopback SGLang and retrieval stand-ins, with
scripted model answers; the printed table, the JSONL and the JSON summary must follow from the
script exactly."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from search_r1_slime import evaluate, prepare_data
from search_r1_slime.preflight import PROBE_QUERY
from tests.fakes.loopback import closed_port
from tests.fakes.retriever import FakeRetriever, doc
from tests.fakes.sglang import FakeSGLang, FakeSGLangPerPrompt, Turn

REPO = Path(__file__).resolve().parent.parent


# (data_source, question, gold answers, the model's scripted turns, its (EM, F1, cover EM))
CASES = [
    ("nq", "who wrote hamlet", ["William Shakespeare"], [
        Turn("<think> I should look it up. </think>\n<search> who wrote hamlet </search>"),
        Turn("<think> The play is by Shakespeare. </think>\n<answer> William Shakespeare </answer>"),
    ], (1, 1.0, 1)),
    # Well-formed, covers the answer, not exact: EM 0 (not the training format_score), F1 2/3
    # (precision 1/2, recall 1), cover EM 1.
    ("nq", "what is the capital of france", ["Paris"], [
        Turn("<think> I know this. </think>\n<answer> Paris, France </answer>"),
    ], (0, 2 / 3, 1)),
    ("triviaqa", "who was the man behind the chipmunks", ["David Seville"], [], (0, 0.0, 0)),  # SGLang fails
    # Never answers: the "<answer> and </answer>" of the invalid-action messages it was shown is
    # not its answer (read as one, it would score F1 0.5 against "Romeo and Juliet").
    ("popqa", "what play has the balcony scene", ["Romeo and Juliet"], [
        Turn("Hmm.", eos=True), Turn("Hmm.", eos=True), Turn("Still hmm.", eos=True),
    ], (0, 0.0, 0)),
    ("hotpotqa", "which magazine was started first", ["Arthur's Magazine"], [
        Turn("<think> Search both. </think>\n<search> arthurs magazine first issue </search>"),
        Turn("<think> 1844 is earlier. </think>\n<answer> Arthur's Magazine </answer>"),
    ], (1, 1.0, 1)),
    # Cover EM is containment (FlashRAG's Sub_ExactMatch): "us" is in "russia", wrong as it is.
    ("musique", "which country was the composer of the anthem born in", ["U.S."], [
        Turn("<think> I know this. </think>\n<answer> Russia </answer>"),
    ], (0, 0.0, 1)),
    # F1 of a yes/no answer: none unless equal (FlashRAG's rule), though "yes" overlaps.
    ("2wikimultihopqa", "are both films from the same country", ["yes"], [
        Turn("<think> Both are American. </think>\n<answer> yes, both </answer>"),
    ], (0, 0.0, 1)),
    # Right answer without <think>: the format is broken, EM still counts it.
    ("bamboogle", "who was president when the hoover dam opened", ["Franklin D. Roosevelt"], [
        Turn("<answer> Franklin D. Roosevelt </answer>"),
    ], (1, 1.0, 1)),
]
CORPUS = {
    "who wrote hamlet": [doc("1", "Hamlet", "Hamlet is a tragedy written by William Shakespeare.")],
    "arthurs magazine first issue": [doc("7", "Arthur's Magazine", "Arthur's Magazine was first published in 1844.")],
}
# NQ: EM (1 + 0) / 2, F1 (1 + 2/3) / 2, cover EM 1. Avg over the seven data sets, the paper's
# rows over the same seven: (.421 + .583 + .413 + .297 + .274 + .066 + .128) / 7 = .3117.
EXPECTED_TABLE = """\
|                            |    NQ | TriviaQA | PopQA | HotpotQA | 2Wiki | Musique | Bamboogle |   Avg |
|----------------------------|------:|---------:|------:|---------:|------:|--------:|----------:|------:|
| EM                         | 0.500 |    0.000 | 0.000 |    1.000 | 0.000 |   0.000 |     1.000 | 0.357 |
| F1                         | 0.833 |    0.000 | 0.000 |    1.000 | 0.000 |   0.000 |     1.000 | 0.405 |
| cover EM                   | 1.000 |    0.000 | 0.000 |    1.000 | 1.000 |   1.000 |     1.000 | 0.714 |
| n                          |     2 |        1 |     1 |        1 |     1 |       1 |         1 |     8 |
| Search-R1 GRPO-Base EM     | 0.421 |    0.583 | 0.413 |    0.297 | 0.274 |   0.066 |     0.128 | 0.312 |
| Search-R1 GRPO-Instruct EM | 0.397 |    0.565 | 0.391 |    0.331 | 0.310 |   0.124 |     0.232 | 0.336 |"""


def write_test_parquet(path: Path, cases=CASES) -> None:
    rows = [
        prepare_data.make_row({"id": f"q{i}", "question": question, "golden_answers": answers}, source, "test", i)
        for i, (source, question, answers, *_) in enumerate(cases)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=prepare_data.SCHEMA), path)


async def run_evaluate(*args: str) -> tuple[int, bytes, bytes]:
    """The command line as a user runs it, in a process of its own (the stand-ins serve from this one)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search_r1_slime.evaluate", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, stdout, stderr


def failed_error(output: Path) -> str:
    """The error of the first failed record of a trajectories file."""
    return next(r["error"] for r in map(json.loads, output.read_text().splitlines()) if r["status"] == "failed")


def chat_prompt(tokenizer, question: str) -> str:
    content = prepare_data.make_prompt(prepare_data.normalize_question(question))
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


async def test_command_line_scores_the_scripted_answers_in_the_papers_layout(tokenizer, tokenizer_dir, tmp_path):
    data = tmp_path / "test.parquet"
    write_test_parquet(data)
    scripts = {chat_prompt(tokenizer, question): turns for _, question, _, turns, _ in CASES}
    output = tmp_path / "out/trajectories.jsonl"

    # The preflight's test search first, then the model's searches.
    async with FakeSGLangPerPrompt(tokenizer, scripts) as sglang, FakeRetriever({**CORPUS, PROBE_QUERY: []}) as retriever:
        triviaqa = sglang.fakes[chat_prompt(tokenizer, CASES[2][1])]
        triviaqa.failures.append(400)  # a request SGLang rejects: not retried, the sample fails
        config = tmp_path / "search.yaml"
        config.write_text(f"search_r1:\n  max_turns: 2\n  local:\n    search_url: {retriever.search_url}\n")
        code, stdout, stderr = await run_evaluate(
            "--data", str(data), "--hf-checkpoint", tokenizer_dir, "--sglang-url", sglang.url(),
            "--config", str(config), "--output", str(output), "--max-concurrency", "2", "--no-progress",
        )
        assert code == 1, stderr.decode()  # one trajectory failed: not a clean evaluation
        assert all(fake.script_done for fake in sglang.fakes.values())
        assert retriever.queries_received[0] == PROBE_QUERY
        assert sorted(retriever.queries_received[1:]) == sorted(CORPUS)

        # Greedy, as Search-R1 evaluated.
        assert {r["sampling_params"]["temperature"] for f in sglang.fakes.values() for r in f.requests} == {0.0}

    summary = tmp_path / "out/trajectories.summary.json"
    assert stdout.decode().splitlines()[-len(EXPECTED_TABLE.splitlines()):] == EXPECTED_TABLE.splitlines()
    assert f"Scores of 8 questions (trajectories in {output}, summary in {summary})" in stdout.decode()
    assert stderr.decode().splitlines()[-1] == (
        "ERROR: 1 of 8 trajectories failed: SGLang could not generate them (first error: "
        f"{failed_error(output)}; "
        f"each failed record's 'error' in {output}); the table counts them as wrong."
    )

    records = sorted((json.loads(line) for line in output.read_text().splitlines()), key=lambda r: r["index"])
    assert [(r["em"], r["f1"], r["cover_em"]) for r in records] == [case[4] for case in CASES]
    assert [r["data_source"] for r in records] == [case[0] for case in CASES]
    assert [r["answer"] for r in records] == ["William Shakespeare", "Paris, France", None, None, "Arthur's Magazine", "Russia", "yes, both",
                                              "Franklin D. Roosevelt"]
    assert [r["searches"] for r in records] == [1, 0, 0, 0, 1, 0, 0, 0]
    assert [r["status"] for r in records] == ["completed", "completed", "failed"] + ["completed"] * 5
    assert "<answer> and </answer>" in records[3]["response"]
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

    written = json.loads(summary.read_text())
    nq = written["per_source"]["nq"]
    assert {k: nq[k] for k in ("questions", "em", "f1", "cover_em", "em_pass")} == {
        "questions": 2, "em": 0.5, "f1": (1 + 2 / 3) / 2, "cover_em": 1.0, "em_pass": 0.5}
    # The training reward (EM with format_score 0.2) term by term: right and retrieved (1), wrong in
    # a valid format (0.2); a failed trajectory is not scored.
    assert nq["reward"] == {"answer": 0.5, "format_valid": 1.0, "retrieval_hit": 0.5, "outcome": 0.6, "format_penalty": 0.0,
                            "search_penalty": 0.0, "invalid_action_penalty": 0.0, "no_search_penalty": 0.0,
                            "no_answer_penalty": 0.0, "total": 0.6}
    assert records[2]["reward"] is None and written["per_source"]["triviaqa"]["reward"] == {}
    assert (nq["judge"], nq["unjudged"]) == (None, 0) and "judge" not in records[0]
    assert written["average"]["em"] == 2.5 / 7 and written["average"]["cover_em"] == 5 / 7 and written["failed_trajectories"] == 1
    assert (written["questions"], written["n_samples"], written["temperature"]) == (8, 1, 0.0)
    assert written["paper_em"]["Search-R1 GRPO-Base"] == {"nq": 0.421, "triviaqa": 0.583, "popqa": 0.413, "hotpotqa": 0.297,
                                                           "2wikimultihopqa": 0.274, "musique": 0.066, "bamboogle": 0.128}


class FreshSamples(FakeSGLang):
    """Every request starts a new one-turn sample of the same prompt, so the K samples of a
    question may interleave (the plain stand-in follows one trajectory)."""

    def __init__(self, tokenizer, prompt_ids: list[int], turns: list[Turn]):
        super().__init__(tokenizer, prompt_ids, turns)
        self.prompt_ids = prompt_ids

    async def handle_generate(self, request):
        self.expect_fresh_start(self.prompt_ids)
        return await super().handle_generate(request)


async def test_n_samples_gives_mean_and_pass_at_k(tokenizer, tokenizer_dir, tmp_path):
    right, wrong = Turn("<think> x </think>\n<answer> Paris </answer>"), Turn("<think> x </think>\n<answer> Lyon </answer>")
    data = tmp_path / "test.parquet"
    write_test_parquet(data, [("nq", "capital of france", ["Paris"])])
    prompt_ids = tokenizer(chat_prompt(tokenizer, "capital of france"), add_special_tokens=False)["input_ids"]
    async with FreshSamples(tokenizer, prompt_ids, [right, wrong, wrong]) as sglang:
        code, stdout, stderr = await run_evaluate(
            "--data", str(data), "--hf-checkpoint", tokenizer_dir, "--sglang-url", sglang.url(), "--skip-preflight",
            "--output", str(tmp_path / "eval.jsonl"), "--no-progress", "--n-samples", "3", "--temperature", "0.7",
        )
        assert code == 0, stderr.decode()
        assert sglang.script_done
        assert {r["sampling_params"]["temperature"] for r in sglang.requests} == {0.7}

    lines = stdout.decode().splitlines()
    assert "Scores of 1 question x 3 samples" in stdout.decode()
    first = lines.index("| EM mean@3                  | 0.333 |        - |     - |        - |     - |       - |         - | 0.333 |")
    assert lines[first:first + 5] == [
        "| EM mean@3                  | 0.333 |        - |     - |        - |     - |       - |         - | 0.333 |",
        "| F1 mean@3                  | 0.333 |        - |     - |        - |     - |       - |         - | 0.333 |",
        "| cover EM mean@3            | 0.333 |        - |     - |        - |     - |       - |         - | 0.333 |",
        "| EM pass@3                  | 1.000 |        - |     - |        - |     - |       - |         - | 1.000 |",
        "| n                          |     1 |        - |     - |        - |     - |       - |         - |     1 |",
    ]
    records = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert sorted((r["index"], r["sample"]) for r in records) == [(0, 0), (0, 1), (0, 2)]
    assert sorted(r["answer"] for r in records) == ["Lyon", "Lyon", "Paris"]


def test_mean_and_pass_at_k_by_hand():
    records = [
        {"data_source": "nq", "index": 0, "em": e, "f1": float(e), "cover_em": e} for e in (1, 0, 0)
    ] + [
        {"data_source": "nq", "index": 1, "em": e, "f1": float(e), "cover_em": e} for e in (0, 0, 0)
    ]
    nq = evaluate.scores_by_source(records)["nq"]
    assert (nq.questions, nq.em, nq.em_pass) == (2, 1 / 6, 0.5)


def test_several_samples_need_a_temperature(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(tmp_path / "x.parquet"), "--hf-checkpoint", str(tmp_path), "--n-samples", "4"])
    assert "--n-samples > 1 needs --temperature > 0" in capsys.readouterr().err


def test_refuses_to_start_when_the_retriever_is_down(tokenizer_dir, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    config = tmp_path / "search.yaml"
    config.write_text(f"search_r1:\n  local:\n    search_url: http://127.0.0.1:{closed_port}/retrieve\n")
    data = tmp_path / "test.parquet"
    write_test_parquet(data)
    output = tmp_path / "out.jsonl"

    code = evaluate.main(["--data", str(data), "--hf-checkpoint", tokenizer_dir, "--config", str(config),
                          "--output", str(output)])

    assert code == 1
    assert f"ERROR: retrieval server http://127.0.0.1:{closed_port}/health is not answering" in capsys.readouterr().err
    assert not output.exists()


def test_table_lists_data_sets_outside_the_paper_after_its_seven():
    scores = evaluate.scores_by_source([
        {"data_source": "strategyqa", "index": 0, "em": 1, "f1": 1.0, "cover_em": 1},
        {"data_source": "popqa", "index": 1, "em": 0, "f1": 0.5, "cover_em": 1},
        {"data_source": "popqa", "index": 2, "em": 1, "f1": 1.0, "cover_em": 1},
    ])
    assert list(scores) == ["popqa", "strategyqa"]
    header, _, em, f1, _, counts, base, _ = evaluate.format_table(scores).splitlines()
    assert header.split("|")[1:-1][-3:] == [" Bamboogle ", " strategyqa ", "   Avg "]
    assert em.split("|")[-3:-1] == [" 1.000 ".rjust(12), " 0.750 "]
    assert f1.split("|")[4] == " 0.750 " and f1.split("|")[-2] == " 0.875 "
    assert counts.split("|")[-2] == "     3 "
    # The paper has PopQA but not StrategyQA: its row shows PopQA, and no Avg over other data sets.
    assert base.split("|")[4] == " 0.413 " and base.split("|")[-3:-1] == ["          - ", "     - "]


def test_no_paper_rows_when_no_data_set_of_the_paper_was_evaluated():
    scores = evaluate.scores_by_source([{"data_source": "strategyqa", "index": 0, "em": 1, "f1": 1.0, "cover_em": 1}])
    assert "Search-R1" not in evaluate.format_table(scores)


async def test_sglang_down_is_one_line_before_any_trajectory(tokenizer_dir, tmp_path):
    data = tmp_path / "test.parquet"
    write_test_parquet(data)
    output = tmp_path / "out.jsonl"
    port = closed_port()
    async with FakeRetriever({PROBE_QUERY: []}) as retriever:
        config = tmp_path / "search.yaml"
        config.write_text(f"search_r1:\n  local:\n    search_url: {retriever.search_url}\n")
        code, stdout, stderr = await run_evaluate(
            "--data", str(data), "--hf-checkpoint", tokenizer_dir, "--sglang-url", f"http://127.0.0.1:{port}",
            "--config", str(config), "--output", str(output), "--no-progress",
        )

    assert code == 1 and stdout == b""
    [line] = stderr.decode().splitlines()
    assert line.startswith(f"ERROR: SGLang at http://127.0.0.1:{port} is not answering (")
    assert line.endswith("start it (python -m sglang.launch_server --model-path ... --port ...) or pass --sglang-url")
    assert not output.exists()


async def test_an_evaluation_whose_every_trajectory_failed_prints_no_table_and_exits_1(tokenizer, tokenizer_dir, tmp_path):
    cases = [("nq", "who wrote hamlet", ["William Shakespeare"], [], (0, 0.0, 0))]
    data = tmp_path / "test.parquet"
    write_test_parquet(data, cases)
    output = tmp_path / "out.jsonl"
    async with FakeSGLangPerPrompt(tokenizer, {chat_prompt(tokenizer, "who wrote hamlet"): []}) as sglang:
        next(iter(sglang.fakes.values())).failures.append(400)
        code, stdout, stderr = await run_evaluate(
            "--data", str(data), "--hf-checkpoint", tokenizer_dir, "--sglang-url", sglang.url(), "--skip-preflight",
            "--output", str(output), "--no-progress",
        )

    assert code == 1 and stdout == b""
    # An evaluation has no loss: its log speaks of an evaluation sample.
    assert stderr.decode().splitlines()[0] == (
        f"ERROR generate_with_search: SGLang /generate failed; evaluation sample marked FAILED: {failed_error(output)}")
    assert stderr.decode().splitlines()[-1] == (
        f"ERROR: 1 of 1 trajectories failed: SGLang could not generate them (first error: {failed_error(output)}; "
        f"each failed record's 'error' in {output})"
    )
    assert not evaluate.summary_path(output).exists()


@pytest.mark.parametrize("flags, message", [
    ({"--data": "{tmp}/missing.parquet"}, "ERROR: --data {tmp}/missing.parquet is not a file: build test.parquet with search-r1-prepare-data"),
    ({"--data": "{tmp}"}, "ERROR: --data {tmp} is not a file: build test.parquet with search-r1-prepare-data"),
    ({"--data": "{tmp}/search.yaml"}, "ERROR: --data {tmp}/search.yaml is not a readable parquet file: "),
    ({"--hf-checkpoint": "{tmp}/test.parquet"}, "ERROR: --hf-checkpoint {tmp}/test.parquet: is a file, not a model's folder"),
    ({"--config": "{tmp}/missing.yaml"}, "ERROR: --config {tmp}/missing.yaml: no such file"),
    ({"--config": "{tmp}"}, "ERROR: --config {tmp}: is a directory, not a file"),
    ({"--config": "{tmp}/hyphen.yaml"}, "ERROR: top-level key 'search-r1' is not read by the plugin: name it search_r1"),
    ({"--config": "{tmp}/typo.yaml", "--skip-preflight": None}, "ERROR: unknown search_r1 setting(s): max_turn."),
])
def test_a_wrong_input_is_one_line_and_exit_1(tokenizer_dir, tmp_path, capsys, flags, message):
    write_test_parquet(tmp_path / "test.parquet")
    (tmp_path / "search.yaml").write_text("search_r1:\n  topk: 3\n")
    (tmp_path / "hyphen.yaml").write_text("search-r1:\n  topk: 3\n")
    (tmp_path / "typo.yaml").write_text("search_r1:\n  max_turn: 3\n")
    argv = {"--data": str(tmp_path / "test.parquet"), "--hf-checkpoint": tokenizer_dir, "--config": str(tmp_path / "search.yaml"),
            "--sglang-url": f"http://127.0.0.1:{closed_port()}", "--output": str(tmp_path / "out.jsonl")}
    argv.update({flag: value if value is None else value.format(tmp=tmp_path) for flag, value in flags.items()})

    code = evaluate.main([item for pair in argv.items() for item in pair if item is not None])

    assert code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(message.format(tmp=tmp_path))


@pytest.mark.parametrize("flags, message", [
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--temperature", "-1"], "--temperature must be at least 0"),
    (["--top-p", "0"], "--top-p above 0 and at most 1"),
    (["--sglang-url", "http://127.0.0.1:99999"], "--sglang-url must look like http://HOST:PORT, got 'http://127.0.0.1:99999'"),
    (["--sglang-url", "localhost"], "--sglang-url must look like http://HOST:PORT, got 'localhost'"),
    (["--sglang-url", "http://[::1"], "--sglang-url must look like http://HOST:PORT, got 'http://[::1'"),
    (["--sglang-url", "ftp://127.0.0.1:30000"], "--sglang-url must look like http://HOST:PORT, got 'ftp://127.0.0.1:30000'"),
    (["--temperature", "nan"], "--temperature must be at least 0"),
    (["--output", "/proc/eval.jsonl"], "--output /proc/eval.jsonl: the folder /proc is not writable"),
    (["--output", "{tmp}"], "--output {tmp} is a directory; name the JSONL file to write"),
])
def test_a_bad_flag_value_is_refused_by_the_command_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--data", str(tmp_path / "x.parquet"), "--hf-checkpoint", str(tmp_path), *[f.format(tmp=tmp_path) for f in flags]])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err


def test_a_missing_checkpoint_folder_is_one_line_before_anything_loads(tmp_path, capsys, monkeypatch):
    write_test_parquet(tmp_path / "test.parquet")
    monkeypatch.setattr("generate_with_search.load_tokenizer", lambda path: pytest.fail("the tokenizer was loaded"))
    monkeypatch.setattr(evaluate, "sglang_problem", lambda *args: pytest.fail("SGLang was asked"))
    before = sorted(tmp_path.rglob("*"))

    code = evaluate.main(["--data", str(tmp_path / "test.parquet"), "--hf-checkpoint", str(tmp_path / "no-model"),
                          "--output", str(tmp_path / "out/eval.jsonl"), "--skip-preflight"])

    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"ERROR: --hf-checkpoint {tmp_path}/no-model: no such directory (a Hugging Face model is named org/name)"]
    assert sorted(tmp_path.rglob("*")) == before


def test_sglang_not_answering_is_found_before_the_tokenizer_loads(tokenizer_dir, tmp_path, capsys, monkeypatch):
    write_test_parquet(tmp_path / "test.parquet")
    monkeypatch.setattr("generate_with_search.load_tokenizer", lambda path: pytest.fail("the tokenizer was loaded"))
    port = closed_port()

    code = evaluate.main(["--data", str(tmp_path / "test.parquet"), "--hf-checkpoint", tokenizer_dir, "--skip-preflight",
                          "--sglang-url", f"http://127.0.0.1:{port}", "--output", str(tmp_path / "eval.jsonl")])

    assert code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"ERROR: SGLang at http://127.0.0.1:{port} is not answering (")
    assert not (tmp_path / "eval.jsonl").exists()


async def test_a_tokenizer_without_a_chat_template_is_one_line_and_writes_nothing(tokenizer, tmp_path):
    plain = tmp_path / "plain_tokenizer"
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        tokenizer.save_pretrained(plain)
    finally:
        tokenizer.chat_template = template
    write_test_parquet(tmp_path / "test.parquet")
    output = tmp_path / "out.jsonl"
    async with FakeSGLangPerPrompt(tokenizer, {}) as sglang:
        code, stdout, stderr = await run_evaluate(
            "--data", str(tmp_path / "test.parquet"), "--hf-checkpoint", str(plain), "--sglang-url", sglang.url(),
            "--skip-preflight", "--output", str(output), "--no-progress",
        )

    assert code == 1 and stdout == b""
    assert stderr.decode().splitlines() == [
        f"ERROR: the tokenizer of --hf-checkpoint {plain} has no chat template, and every prompt is rendered with it "
        "(as slime's --apply-chat-template does): use a checkpoint whose tokenizer_config.json has one"]
    assert not output.exists()


def test_an_output_that_cannot_be_written_is_refused_before_anything_starts(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_:  # under a regular file: a failure for root too
        evaluate.main(["--data", str(tmp_path / "x.parquet"), "--hf-checkpoint", str(tmp_path), "--output", str(tmp_path / "notes.txt/run1/eval.jsonl")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"search-r1-evaluate: error: --output {tmp_path}/notes.txt/run1/eval.jsonl: {tmp_path}/notes.txt is a file, not a folder"]
    assert sorted(tmp_path.rglob("*")) == before


async def test_judge_url_adds_the_judges_row_and_a_judge_that_cannot_answer_stops_before_any_trajectory(tokenizer, tokenizer_dir, tmp_path):
    from tests.fakes.chat_judge import FakeJudge

    cases = [("nq", "who was president in 1962", ["John F. Kennedy"]), ("nq", "capital of france", ["Paris"])]
    data = tmp_path / "test.parquet"
    write_test_parquet(data, cases)
    scripts = {chat_prompt(tokenizer, "who was president in 1962"): [Turn("<think> x </think>\n<answer> JFK </answer>")],
               chat_prompt(tokenizer, "capital of france"): [Turn("<think> x </think>\n<answer> Lyon </answer>")]}
    common = ("--data", str(data), "--hf-checkpoint", tokenizer_dir, "--skip-preflight", "--output", str(tmp_path / "eval.jsonl"), "--no-progress")
    async with FakeSGLangPerPrompt(tokenizer, scripts) as sglang, FakeJudge({"John F. Kennedy": ["jfk"], "Paris": ["paris"]}) as judge:
        code, stdout, stderr = await run_evaluate(*common, "--sglang-url", sglang.url(), "--judge-url", judge.endpoint)
        assert code == 0, stderr.decode()
        # The check before the first trajectory, then the two answers.
        assert judge.items(0) == [("What is the capital of France?", ["Paris"], "Paris")]
        asked = sorted(item for i in range(1, len(judge.requests)) for item in judge.items(i))
        assert asked == [("capital of france?", ["Paris"], "Lyon"), ("who was president in 1962?", ["John F. Kennedy"], "JFK")]

        judge.faults.extend([(400, "no such model", None)])
        code, _, stderr = await run_evaluate(*common, "--sglang-url", sglang.url(), "--judge-url", judge.endpoint)
        assert code == 1 and stderr.decode().splitlines() == [
            f"ERROR: the judge at {judge.endpoint} gave no verdict: HTTP 400: 'no such model'"]
    # JFK is right for the judge, not for EM.
    assert "| judge                      | 0.500 |        - |     - |        - |     - |       - |         - | 0.500 |" in stdout.decode()
    assert "| EM                         | 0.000 |" in stdout.decode()
    records = sorted((json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()), key=lambda r: r["index"])
    assert [(r["answer"], r["judge"], r["judge_error"]) for r in records] == [("JFK", 1, None), ("Lyon", 0, None)]
    # The training reward's terms: two wrong answers in a valid format, 0.2 each.
    assert re.search(r"^\| total +\| 0\.200 \| 0\.200 \|$", stdout.decode(), re.MULTILINE)
