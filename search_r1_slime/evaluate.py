"""Evaluate a model on Search-R1's test set with the same agent loop it was trained with.

    search-r1-evaluate --data data/test.parquet --hf-checkpoint /root/Qwen2.5-3B \\
        --sglang-url http://127.0.0.1:30000 --config search.yaml --output eval.jsonl

Every row of the parquet (``search-r1-prepare-data``'s format) is rendered with the tokenizer's chat
template, as slime's ``--apply-chat-template`` does, and run through
``generate_with_search.generate`` against a running SGLang server and the configured search
backend, at most ``--max-concurrency`` trajectories at once. Each trajectory goes to the JSONL file
as soon as it ends (prompt, response, extracted answer, reward, searches, status, ...). The score
is the paper's: exact match of the answer, no format credit (``format_score`` 0), printed per
``data_source`` and averaged over the data sets in the layout of Search-R1's results table.

slime is not needed: samples are a small record with the fields of slime's ``Sample`` that the
plugin uses (it takes the path it takes on older slime versions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pyarrow.parquet as pq
from tqdm import tqdm

logger = logging.getLogger(__name__)

# Search-R1's results table: data_source -> column title, in the paper's order.
PAPER_COLUMNS = {
    "nq": "NQ",
    "triviaqa": "TriviaQA",
    "popqa": "PopQA",
    "hotpotqa": "HotpotQA",
    "2wikimultihopqa": "2Wiki",
    "musique": "Musique",
    "bamboogle": "Bamboogle",
}


@dataclass
class EvalSample:
    """The fields of slime's ``Sample`` that the plugin reads and writes, with slime's names."""

    class Status(Enum):
        PENDING = "pending"
        COMPLETED = "completed"
        TRUNCATED = "truncated"
        ABORTED = "aborted"
        FAILED = "failed"

    prompt: str = ""
    label: Any = None
    tokens: list[int] = field(default_factory=list)
    response: str = ""
    response_length: int = 0
    reward: float | None = None
    loss_mask: list[int] | None = None
    rollout_log_probs: list[float] | None = None
    remove_sample: bool = False
    status: Status = Status.PENDING
    metadata: dict = field(default_factory=dict)


def sampling_params(max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
    """What slime sends for every sample (its GenerateState), with evaluation's settings."""
    return {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": -1,
        "max_new_tokens": max_new_tokens,
        "stop": None,
        "stop_token_ids": None,
        "skip_special_tokens": True,
        "no_stop_trim": True,
        "spaces_between_special_tokens": False,
    }


def read_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = pq.read_table(path).to_pylist()
    missing = {"prompt", "reward_model", "data_source"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}: build it with search-r1-prepare-data")
    return rows[:limit] if limit is not None else rows


async def evaluate_row(
    index: int, row: dict[str, Any], tokenizer, args: SimpleNamespace, score_args: SimpleNamespace, params: dict
) -> dict[str, Any]:
    """Run one trajectory and score it; returns its JSONL record."""
    from generate_with_search import generate, reward_func
    from qa_em import extract_solution

    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    sample = EvalSample(prompt=prompt, label=row["reward_model"])
    sample = await generate(args, sample, dict(params))
    reward = await reward_func(score_args, sample)
    metrics = sample.metadata.get("search_r1", {})
    return {
        "index": index,
        "id": row.get("id"),
        "data_source": row["data_source"],
        "question": row.get("question"),
        "golden_answers": row["reward_model"]["ground_truth"]["target"],
        "prompt": prompt,
        "response": sample.response,
        "answer": extract_solution(sample.response),
        "reward": reward,
        "status": sample.status.value,
        "response_length": sample.response_length,
        "turns": metrics.get("turns"),
        "searches": metrics.get("searches"),
        "search_failures": metrics.get("search_failures"),
        "error": metrics.get("generate_error"),
    }


async def run_evaluation(
    rows: list[dict[str, Any]],
    args: SimpleNamespace,
    params: dict[str, Any],
    output: Path,
    max_concurrency: int,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every row, writing each record to ``output`` as it finishes; returns the records."""
    from generate_with_search import load_tokenizer
    from search_r1_slime.http_client import close_shared_session

    tokenizer = load_tokenizer(args.hf_checkpoint)
    # The paper's score is pure exact match, whatever format_score training used.
    score_args = SimpleNamespace(**{**vars(args), "search_r1": {**args.search_r1, "format_score": 0.0}})
    semaphore = asyncio.Semaphore(max_concurrency)

    async def bounded(index: int, row: dict[str, Any]) -> dict[str, Any]:
        async with semaphore:
            return await evaluate_row(index, row, tokenizer, args, score_args, params)

    records = []
    output.parent.mkdir(parents=True, exist_ok=True)
    tasks = [asyncio.ensure_future(bounded(i, row)) for i, row in enumerate(rows)]
    try:
        with open(output, "w", encoding="utf-8") as out, tqdm(total=len(rows), disable=not progress, desc="eval") as bar:
            for finished in asyncio.as_completed(tasks):
                record = await finished
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()  # a crash later keeps every finished trajectory
                records.append(record)
                bar.update(1)
    finally:
        for task in tasks:
            task.cancel()
        await close_shared_session()
    return sorted(records, key=lambda r: r["index"])


def exact_match_by_source(records: list[dict[str, Any]]) -> dict[str, tuple[float, int]]:
    """data_source -> (mean EM, number of questions), paper data sets first, others after."""
    scores: dict[str, list[float]] = {}
    for record in records:
        scores.setdefault(record["data_source"], []).append(record["reward"])
    order = [s for s in PAPER_COLUMNS if s in scores] + sorted(s for s in scores if s not in PAPER_COLUMNS)
    return {source: (sum(scores[source]) / len(scores[source]), len(scores[source])) for source in order}


def format_table(em: dict[str, tuple[float, int]]) -> str:
    """A Markdown table in the paper's layout; data sets not evaluated show '-'.

    Avg is the unweighted mean over the data sets that were evaluated, as in the paper.
    """
    sources = list(PAPER_COLUMNS) + [s for s in em if s not in PAPER_COLUMNS]
    titles = [PAPER_COLUMNS.get(s, s) for s in sources] + ["Avg"]
    cells = [f"{em[s][0]:.3f}" if s in em else "-" for s in sources]
    counts = [str(em[s][1]) if s in em else "-" for s in sources]
    average = sum(score for score, _ in em.values()) / len(em) if em else 0.0
    cells.append(f"{average:.3f}")
    counts.append(str(sum(n for _, n in em.values())))
    widths = [max(len(t), len(c), len(n)) for t, c, n in zip(titles, cells, counts)]

    def line(label: str, values: list[str]) -> str:
        return "| " + " | ".join([label.ljust(5)] + [v.rjust(w) for v, w in zip(values, widths)]) + " |"

    rule = "|" + "|".join(["-" * 7] + ["-" * (w + 1) + ":" for w in widths]) + "|"
    return "\n".join([line("", titles), rule, line("EM", cells), line("n", counts)])


def _sglang_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"--sglang-url must look like http://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="test.parquet from search-r1-prepare-data")
    parser.add_argument("--hf-checkpoint", required=True, help="the served model's HF folder (its tokenizer is used)")
    parser.add_argument("--sglang-url", default="http://127.0.0.1:30000", help="SGLang server (or router) address")
    parser.add_argument("--config", type=Path, help="YAML with a search_r1: mapping, as given to slime's --custom-config-path")
    parser.add_argument("--output", type=Path, default=Path("eval_trajectories.jsonl"), help="JSONL of every trajectory")
    parser.add_argument("--max-response-len", type=int, default=512, help="token budget of a whole response (as --rollout-max-response-len)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, as in the paper")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-concurrency", type=int, default=64, help="trajectories in flight at once")
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows")
    parser.add_argument("--skip-preflight", action="store_true", help="do not check the search backend first")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    cli = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if cli.max_concurrency < 1 or cli.max_response_len < 1:
        parser.error("--max-concurrency and --max-response-len must be at least 1")

    from search_r1_slime.preflight import load_search_overrides, search_problems

    host, port = _sglang_address(cli.sglang_url)
    overrides = load_search_overrides(cli.config)
    if not cli.skip_preflight:
        problems = search_problems(overrides)
        if problems:
            for problem in problems:
                print(f"ERROR: {problem}", file=sys.stderr)
            return 1
    args = SimpleNamespace(
        sglang_router_ip=host,
        sglang_router_port=port,
        hf_checkpoint=cli.hf_checkpoint,
        rollout_max_response_len=cli.max_response_len,
        partial_rollout=False,
        search_r1=dict(overrides),
    )
    rows = read_rows(cli.data, cli.limit)
    params = sampling_params(cli.max_response_len, cli.temperature, cli.top_p)
    records = asyncio.run(run_evaluation(rows, args, params, cli.output, cli.max_concurrency, not cli.no_progress))

    failed = sum(record["status"] == EvalSample.Status.FAILED.value for record in records)
    if failed:
        print(f"WARNING: {failed} trajectories failed (SGLang errors, see 'error' in {cli.output}); they count as wrong.", file=sys.stderr)
    print(f"Exact match ({len(records)} questions, trajectories in {cli.output}):")
    print(format_table(exact_match_by_source(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
