"""``search-r1-evaluate --questions``: deep-research evaluation on GAIA / xBench-DeepSearch /
Frames-style question sets, scored by the LLM judge, reported as the web agents report it.

    search-r1-evaluate --questions gaia_text.jsonl --hf-checkpoint /root/model --sglang-url http://127.0.0.1:30000 \\
        --config deep.yaml --n-samples 4 --temperature 0.6 --output gaia.jsonl

The question file is the user's (JSONL, JSON list, CSV or TSV; one question a row): the question
is read from ``--question-key`` and the gold answer(s) from ``--answer-key`` (a string or a list).
Every question gets the two-tool prompt (``prepare_data.make_deep_research_prompt``, with
``search_r1.access.tag``), rendered with the tokenizer's chat template, and runs through
``generate_with_search.generate`` ``--n-samples`` times. The answer of a model turn is judged by
``search_r1_slime.judge`` (``search_r1.judge`` in ``--config``: its URL is required here).

Per data set (the file's stem, or ``--data-source``), with N questions, k samples each and
c_qj = 1 when the judge says sample j of question q is right:

* Avg@k = (1/N) sum_q (1/k) sum_j c_qj, the mean accuracy over samples (ASearcher's Avg@4);
* Pass@k = (1/N) sum_q max_j c_qj, the share of questions with a right sample among k (Pass@4);
* turns, tool calls, searches and page reads per trajectory (means), and the cost: searches run
  (before the search backend's cache), page reads and pages fetched (after the page cache), and
  judge verdicts asked.

An answer the judge could not judge counts as wrong, is counted in ``unjudged``, and makes the exit
status 1, like a trajectory SGLang failed.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from search_r1_slime.evaluate import EvalSample


def _answers(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)] if value is not None and str(value).strip() else []


def read_questions(path: Path, question_key: str, answer_key: str, data_source: str | None, limit: int | None) -> list[dict[str, Any]]:
    """The rows to evaluate: ``{"question", "golden_answers", "data_source"}``; ``ValueError`` names
    the file, the row and what is wrong."""
    if not path.is_file():
        raise ValueError(f"--questions {path} is not a file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        records = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix == ".json":
        records = json.loads(text)
    else:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"--questions {path}: not JSON lines ({exc})") from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"--questions {path} holds no questions")
    source = data_source or path.stem
    rows = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or not str(record.get(question_key) or "").strip():
            raise ValueError(f"--questions {path}: row {number} has no {question_key!r} (set --question-key)")
        answers = _answers(record.get(answer_key))
        if not answers:
            raise ValueError(f"--questions {path}: row {number} has no {answer_key!r} answer (set --answer-key)")
        rows.append({"question": str(record[question_key]).strip(), "golden_answers": answers, "data_source": source})
    return rows[:limit]


async def evaluate_question(
    index: int, sample_index: int, row: dict[str, Any], tokenizer, args: Any, params: dict
) -> dict[str, Any]:
    """Run one trajectory on the two-tool prompt and judge its answer; returns its JSONL record."""
    from generate_with_search import generate, resolve_config
    from qa_em import extract_solution
    from search_r1_slime.judge import judge_answer
    from search_r1_slime.prepare_data import make_deep_research_prompt

    config = resolve_config(args)
    content = make_deep_research_prompt(row["question"], config["access"]["tag"])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    sample = EvalSample(prompt=prompt, label={"ground_truth": {"target": row["golden_answers"]}})
    sample = await generate(args, sample, dict(params))
    metrics = sample.metadata.get("search_r1", {})
    answer = extract_solution(sample.response) if metrics.get("answered") else None
    verdict = await judge_answer(row["question"], row["golden_answers"], answer, config["judge"])
    return {
        "index": index,
        "sample": sample_index,
        "data_source": row["data_source"],
        "question": row["question"],
        "golden_answers": row["golden_answers"],
        "prompt": prompt,
        "response": sample.response,
        "answer": answer,
        "correct": verdict.correct,
        "judge_reason": verdict.reason,
        "status": sample.status.value,
        "response_length": sample.response_length,
        "turns": metrics.get("turns", 0),
        "tool_calls": metrics.get("tool_calls", 0),
        "searches": metrics.get("searches", 0),
        "page_reads": metrics.get("accesses", 0),
        "pages_fetched": metrics.get("access_fetches", 0),
        "page_failures": {k: v for k, v in metrics.get("access_failures", {}).items() if v},
        "final_turn": metrics.get("final_turn"),
        "error": metrics.get("generate_error"),
    }


@dataclass(frozen=True)
class WebScores:
    """One data set's scores and costs (see the module docstring for each formula)."""

    questions: int
    trajectories: int
    avg_at_k: float
    pass_at_k: float
    unjudged: int
    turns: float
    tool_calls: float
    searches: float
    page_reads: float
    searches_run: int
    page_reads_total: int
    pages_fetched: int
    judge_verdicts: int


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def web_scores(records: list[dict[str, Any]]) -> dict[str, WebScores]:
    """data_source -> its scores, in the order the data sets first appear."""
    by_source: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_source.setdefault(record["data_source"], []).append(record)
    scores = {}
    for source, rows in by_source.items():
        per_question: dict[int, list[int]] = {}
        for record in rows:
            per_question.setdefault(record["index"], []).append(int(record["correct"] is True))
        scores[source] = WebScores(
            questions=len(per_question),
            trajectories=len(rows),
            avg_at_k=_mean([_mean(c) for c in per_question.values()]),
            pass_at_k=_mean([max(c) for c in per_question.values()]),
            unjudged=sum(record["correct"] is None for record in rows),
            turns=_mean([r["turns"] for r in rows]),
            tool_calls=_mean([r["tool_calls"] for r in rows]),
            searches=_mean([r["searches"] for r in rows]),
            page_reads=_mean([r["page_reads"] for r in rows]),
            searches_run=sum(r["searches"] for r in rows),
            page_reads_total=sum(r["page_reads"] for r in rows),
            pages_fetched=sum(r["pages_fetched"] for r in rows),
            judge_verdicts=sum(r["answer"] is not None and bool(str(r["answer"]).strip()) for r in rows),
        )
    return scores


def format_web_table(scores: dict[str, WebScores], k: int) -> str:
    """A Markdown table: one row per data set."""
    titles = ["data set", "n", f"Avg@{k}", f"Pass@{k}", "unjudged", "turns", "tool calls", "searches", "page reads",
              "searches run", "pages fetched", "judge verdicts"]
    rows = [
        [source, str(s.questions), f"{s.avg_at_k:.3f}", f"{s.pass_at_k:.3f}", str(s.unjudged), f"{s.turns:.1f}",
         f"{s.tool_calls:.1f}", f"{s.searches:.1f}", f"{s.page_reads:.1f}", str(s.searches_run), str(s.pages_fetched),
         str(s.judge_verdicts)]
        for source, s in scores.items()
    ]
    widths = [max(len(t), *(len(r[i]) for r in rows)) for i, t in enumerate(titles)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(titles), rule, *(line(r) for r in rows)])


def write_web_summary(path: Path, scores: dict[str, WebScores], k: int, failed: int, settings: dict[str, Any]) -> None:
    summary = {**settings, "n_samples": k, "failed_trajectories": failed, "per_source": {s: asdict(v) for s, v in scores.items()}}
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
