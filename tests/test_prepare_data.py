"""prepare_data.py on a small dataset in FlashRAG_datasets' layout: Search-R1's exact prompt text,
label structure, split choice and order, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from search_r1_slime import prepare_data
from tests.fakes.hub import run_without_hub

REPO = Path(__file__).resolve().parent.parent

# Search-R1's scripts/data_process/qa_search_train_merge.py, make_prefix(template_type="base"),
# written out in full: a change to this text changes what the model was trained on.
SEARCH_R1_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get "
    "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. Question: {}\n"
)

# dataset -> split -> records; the split files each dataset really has on the Hub.
FLASHRAG = {
    "nq": {
        "train": [
            {"id": "train_0", "question": "total number of death row inmates in the us", "golden_answers": ["2,718"]},
            {"id": "train_1", "question": "  who sings love will keep us alive? ", "golden_answers": ["Eagles", "the Eagles"]},
        ],
        "dev": [{"id": "dev_0", "question": "nq dev question", "golden_answers": ["x"]}],
        "test": [
            {"id": "test_0", "question": "who got the first nobel prize in physics", "golden_answers": ["Wilhelm Conrad Röntgen"]},
            {"id": "test_1", "question": "when is the next deadpool movie being released", "golden_answers": ["May 18, 2018"]},
        ],
    },
    "hotpotqa": {
        "train": [{"id": "5a7a0693", "question": "Which magazine was started first?", "golden_answers": ["Arthur's Magazine"]}],
        "dev": [{"id": "5a8b57f2", "question": "Were Scott Derrickson and Ed Wood of the same nationality", "golden_answers": ["yes"]}],
    },
    "triviaqa": {
        "train": [{"id": "tq_train", "question": "q", "golden_answers": ["a"]}],
        "dev": [{"id": "tq_dev", "question": "q", "golden_answers": ["a"]}],
        "test": [{"id": "tq_test", "question": "Who was the man behind The Chipmunks?", "golden_answers": ["David Seville"]}],
    },
    "popqa": {"test": [{"id": "4222362", "question": "What is George Rankin's occupation?", "golden_answers": ["politician", 1914]}]},
    "2wikimultihopqa": {
        "train": [{"id": "w_train", "question": "q", "golden_answers": ["a"]}],
        "dev": [{"id": "w_dev", "question": "Who was born first?", "golden_answers": ["Ben"]}],
    },
    "musique": {
        "train": [{"id": "m_train", "question": "q", "golden_answers": ["a"]}],
        "dev": [{"id": "m_dev", "question": "When was the dam built?", "golden_answers": ["1950"]}],
    },
    "bamboogle": {"test": [{"id": "test_0", "question": "Who was president when the Hoover Dam opened?", "golden_answers": ["Franklin D. Roosevelt"]}]},
}


@pytest.fixture
def flashrag(tmp_path: Path) -> Path:
    root = tmp_path / "FlashRAG_datasets"
    for dataset, splits in FLASHRAG.items():
        (root / dataset).mkdir(parents=True)
        for split, records in splits.items():
            with open(root / dataset / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.write("\n")  # a trailing blank line is not a record
    return root


def rows_as_slime_reads_them(path: Path) -> list[dict]:
    # slime.utils.data.read_file: ParquetFile.iter_batches() -> to_pylist().
    return [row for batch in pq.ParquetFile(path).iter_batches() for row in batch.to_pylist()]


def test_train_parquet_has_search_r1_rows_exactly(flashrag, tmp_path):
    out = tmp_path / "out"
    prepare_data.main(["--local-dir", str(out), "--flashrag-dir", str(flashrag), "--test-sources", ""])

    rows = rows_as_slime_reads_them(out / "train.parquet")
    assert not (out / "test.parquet").exists()
    assert rows == [
        {
            "id": "train_0",
            "question": "total number of death row inmates in the us?",
            "golden_answers": ["2,718"],
            "data_source": "nq",
            "prompt": [{"role": "user", "content": SEARCH_R1_PROMPT.format("total number of death row inmates in the us?")}],
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": {"target": ["2,718"]}},
            "extra_info": {"split": "train", "index": 0},
        },
        {
            "id": "train_1",
            "question": "who sings love will keep us alive?",
            "golden_answers": ["Eagles", "the Eagles"],
            "data_source": "nq",
            "prompt": [{"role": "user", "content": SEARCH_R1_PROMPT.format("who sings love will keep us alive?")}],
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": {"target": ["Eagles", "the Eagles"]}},
            "extra_info": {"split": "train", "index": 1},
        },
        {
            "id": "5a7a0693",
            "question": "Which magazine was started first?",
            "golden_answers": ["Arthur's Magazine"],
            "data_source": "hotpotqa",
            "prompt": [{"role": "user", "content": SEARCH_R1_PROMPT.format("Which magazine was started first?")}],
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": {"target": ["Arthur's Magazine"]}},
            "extra_info": {"split": "train", "index": 0},
        },
    ]


def test_test_parquet_takes_test_else_dev_else_train_in_the_given_order(flashrag, tmp_path):
    out = tmp_path / "out"
    prepare_data.main(["--local-dir", str(out), "--flashrag-dir", str(flashrag), "--train-sources", ""])

    rows = rows_as_slime_reads_them(out / "test.parquet")
    assert [(r["data_source"], r["id"]) for r in rows] == [
        ("nq", "test_0"),
        ("nq", "test_1"),
        ("triviaqa", "tq_test"),
        ("popqa", "4222362"),
        ("hotpotqa", "5a8b57f2"),  # no test split: dev
        ("2wikimultihopqa", "w_dev"),
        ("musique", "m_dev"),
        ("bamboogle", "test_0"),
    ]
    assert {r["extra_info"]["split"] for r in rows} == {"test"}
    assert [r["extra_info"]["index"] for r in rows[:2]] == [0, 1]
    popqa = rows[3]
    assert popqa["reward_model"] == {"style": "rule", "ground_truth": {"target": ["politician", "1914"]}}
    hotpot = rows[4]
    assert hotpot["prompt"][0]["content"].endswith(
        "Question: Were Scott Derrickson and Ed Wood of the same nationality?\n"
    )



def test_per_source_test_files_hold_each_datasets_rows_of_the_test_file(flashrag, tmp_path):
    out = tmp_path / "out"
    prepare_data.main(["--local-dir", str(out), "--flashrag-dir", str(flashrag), "--train-sources", "",
                       "--test-sources", "nq,hotpotqa,bamboogle", "--per-source-test"])

    combined = rows_as_slime_reads_them(out / "test.parquet")
    for source in ("nq", "hotpotqa", "bamboogle"):
        alone = rows_as_slime_reads_them(out / f"test_{source}.parquet")
        assert alone == [row for row in combined if row["data_source"] == source]
    assert [r["id"] for r in rows_as_slime_reads_them(out / "test_hotpotqa.parquet")] == ["5a8b57f2"]  # dev: no test split
    assert sorted(path.name for path in out.iterdir()) == [
        "test.parquet", "test_bamboogle.parquet", "test_hotpotqa.parquet", "test_nq.parquet",
    ]


def test_no_per_source_files_unless_asked(flashrag, tmp_path):
    out = tmp_path / "out"
    prepare_data.main(["--local-dir", str(out), "--flashrag-dir", str(flashrag), "--train-sources", "", "--test-sources", "nq"])
    assert [path.name for path in out.iterdir()] == ["test.parquet"]

def test_command_line_with_search_r1_flag_names(flashrag, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "search_r1_slime.prepare_data", "--local_dir", str(out), "--data_sources", "hotpotqa",
         "--test-sources", "bamboogle,popqa", "--flashrag-dir", str(flashrag)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [r["data_source"] for r in rows_as_slime_reads_them(out / "train.parquet")] == ["hotpotqa"]
    assert [r["data_source"] for r in rows_as_slime_reads_them(out / "test.parquet")] == ["bamboogle", "popqa"]
    assert "wrote" in result.stderr


def test_downloads_only_the_named_datasets_when_no_local_copy_is_given(flashrag, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(flashrag)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    prepare_data.main(["--local-dir", str(tmp_path / "out"), "--train-sources", "nq", "--test-sources", "bamboogle"])

    assert calls == [
        {
            "repo_id": "RUC-NLPIR/FlashRAG_datasets",
            "repo_type": "dataset",
            "revision": None,
            "allow_patterns": ["bamboogle/*.jsonl", "nq/*.jsonl"],
        }
    ]
    assert len(rows_as_slime_reads_them(tmp_path / "out/train.parquet")) == 2


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def test_a_dataset_without_a_train_split_is_a_clear_error(flashrag, tmp_path, caplog):
    assert prepare_data.main(["--local-dir", str(tmp_path / "out"), "--flashrag-dir", str(flashrag),
                              "--train-sources", "nq,popqa"]) == 1
    assert error_lines(caplog) == [f"error: {flashrag}/popqa has no train.jsonl: is 'popqa' a FlashRAG dataset name?"]
    assert not (tmp_path / "out/train.parquet").exists()


def test_an_unknown_dataset_name_is_a_clear_error(flashrag, tmp_path, caplog):
    assert prepare_data.main(["--local-dir", str(tmp_path / "out"), "--flashrag-dir", str(flashrag),
                              "--train-sources", "", "--test-sources", "nq,nqq"]) == 1
    assert error_lines(caplog) == [
        f"error: {flashrag}/nqq has no test.jsonl or dev.jsonl or train.jsonl: is 'nqq' a FlashRAG dataset name?"
    ]


def test_a_broken_record_names_its_file_and_line_and_leaves_no_output(flashrag, tmp_path, caplog):
    with open(flashrag / "bamboogle/test.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "x", "question": "", "golden_answers": []}\n')
    assert prepare_data.main(["--local-dir", str(tmp_path / "out"), "--flashrag-dir", str(flashrag),
                              "--train-sources", ""]) == 1
    assert error_lines(caplog) == [f"error: {flashrag}/bamboogle/test.jsonl:3: a FlashRAG record needs a non-empty 'question'"]
    assert not (tmp_path / "out").exists()


def test_an_empty_source_is_an_error_and_writes_nothing(flashrag, tmp_path, caplog):
    (flashrag / "popqa/test.jsonl").write_text("\n")
    assert prepare_data.main(["--local-dir", str(tmp_path / "out"), "--flashrag-dir", str(flashrag), "--per-source-test"]) == 1
    assert error_lines(caplog) == [
        f"error: {flashrag}/popqa/test.jsonl: no records (one JSON object a line expected); is the download complete?"]
    assert not (tmp_path / "out").exists()  # neither train.parquet nor the test files of the sources before it


def test_a_missing_source_of_the_second_file_writes_not_even_the_first(flashrag, tmp_path, caplog):
    assert prepare_data.main(["--local-dir", str(tmp_path / "out"), "--flashrag-dir", str(flashrag),
                              "--train-sources", "nq", "--test-sources", "nq,nqq"]) == 1
    assert error_lines(caplog) == [
        f"error: {flashrag}/nqq has no test.jsonl or dev.jsonl or train.jsonl: is 'nqq' a FlashRAG dataset name?"]
    assert not (tmp_path / "out").exists()


def test_without_hub_access_one_line_names_the_offline_option(tmp_path):
    result = run_without_hub("search_r1_slime.prepare_data", "--local-dir", str(tmp_path / "out"), "--no-progress", home=tmp_path / "hf")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot download RUC-NLPIR/FlashRAG_datasets from the Hugging Face hub (")
    assert line.endswith("without Hub access, copy the data set repository RUC-NLPIR/FlashRAG_datasets "
                         "(one folder per data set) onto this machine and pass --flashrag-dir DIR")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--flashrag-dir", "{tmp}/nowhere"], "--flashrag-dir {tmp}/nowhere is not a directory"),
    (["--train-sources", "", "--test-sources", ""], "--train-sources and --test-sources are both empty: nothing to write"),
    (["--local-dir", "{tmp}/notes.txt"], "--local-dir {tmp}/notes.txt is a file, not a folder"),
    (["--local-dir", "{tmp}/notes.txt/data"], "--local-dir {tmp}/notes.txt/data: {tmp}/notes.txt is a file, not a folder"),
    (["--local-dir", "/proc/data"], "--local-dir /proc/data: cannot create it, /proc is not writable"),
])
def test_a_bad_flag_is_refused_before_any_download(tmp_path, capsys, flags, message):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SystemExit) as exit_:
        prepare_data.main(["--local-dir", str(tmp_path / "out"), *[f.format(tmp=tmp_path) for f in flags]])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # the error alone, no usage before it
    assert line.endswith(f"error: {message.format(tmp=tmp_path)}")


def test_deep_research_prompt_names_both_tools_and_keeps_the_labels(flashrag, tmp_path):
    out = tmp_path / "out"
    prepare_data.main(["--local-dir", str(out), "--flashrag-dir", str(flashrag), "--test-sources", "", "--prompt", "deep-research"])
    row = pq.read_table(out / "train.parquet").to_pylist()[0]
    content = row["prompt"][0]["content"]
    assert content.startswith("Answer the given question. Reason inside <think> and </think>")
    assert "<search> query </search>" in content and "<access> URL </access>" in content
    assert content.endswith("Question: total number of death row inmates in the us?\n")
    assert row["reward_model"] == {"style": "rule", "ground_truth": {"target": ["2,718"]}}
