"""Evaluate a model on Search-R1's test set with the same agent loop it was trained with.

    search-r1-evaluate --data data/test.parquet --hf-checkpoint /root/Qwen2.5-3B \\
        --sglang-url http://127.0.0.1:30000 --config search.yaml --output eval.jsonl

Every row of the parquet (``search-r1-prepare-data``'s format) is rendered with the tokenizer's chat
template, as slime's ``--apply-chat-template`` does, and run through
``generate_with_search.generate`` against a running SGLang server and the configured search
backend, at most ``--max-concurrency`` trajectories at once. Each trajectory goes to the JSONL file
as soon as it ends (prompt, response, extracted answer, scores, searches, status, ...). Sampling is
greedy by default, as Search-R1 evaluated. The answer a model turn gave is scored by exact match
(the paper's score: no format credit), token F1 and cover EM (``qa_em``; docs/metrics.md gives
the source each follows), per ``data_source`` and averaged over the data sets, in the layout of Search-R1's results table with the paper's
Qwen2.5-3B rows beside ours. ``--n-samples K`` samples every question K times: the scores are then
means over the samples (mean@K) and a pass@K row counts questions with at least one exact match.
A JSON summary of the table is written next to the JSONL. Each trajectory also gets the training
reward of the ``--config`` (``search_r1_slime.rewards``: the same terms slime logs as
``search_r1/reward/<term>``), printed per data set above the main table. ``--judge-url`` asks an
LLM judge (``search_r1_slime.judge``) about every answer: a ``judge`` row (mean@K and pass@K over the
samples it judged; the ones it could not judge are counted and left out).

Reproducing an evaluation: with ``search_r1.search_db`` in ``--config`` every search is recorded
(docs/reproducibility.md); ``--replay FILE`` answers every search from such a record instead, in
strict mode, so the same model and sampling give the same scores with no search backend running.

``--questions FILE`` instead of ``--data`` evaluates deep-research mode on a GAIA / xBench-DeepSearch /
Frames-style question set, judged by the LLM judge (``search_r1_slime.web_eval``: Avg@k, Pass@k,
turns, tool calls and cost; docs/deep_research.md).

Before the first trajectory every input is checked (the data, the search configuration, the
tokenizer, that SGLang answers, and the search backend as ``search-r1-preflight`` checks it); a
problem is one ``ERROR:`` line and exit status 1. Trajectories that SGLang failed count as wrong
and make the exit status 1 too, with a line saying how many and why.

slime is not needed: samples are a small record with the fields of slime's ``Sample`` that the
plugin uses (it takes the path it takes on older slime versions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from local_dense_retriever.cli import ArgumentParser, ExtraImports, check_model, check_output
from search_r1_slime.http_client import one_line

with ExtraImports("retriever") as RETRIEVER:
    import pyarrow as pa
    import pyarrow.parquet as pq

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
# Search-R1 paper (Jin et al., 2025), results table, Qwen2.5-3B trained with GRPO: EM per data set.
PAPER_ROWS = {
    "Search-R1 GRPO-Base": dict(zip(PAPER_COLUMNS, (0.421, 0.583, 0.413, 0.297, 0.274, 0.066, 0.128))),
    "Search-R1 GRPO-Instruct": dict(zip(PAPER_COLUMNS, (0.397, 0.565, 0.391, 0.331, 0.310, 0.124, 0.232))),
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
    """The rows to evaluate; ``ValueError`` (or ``OSError``) says what is wrong with the file."""
    if not path.is_file():
        raise ValueError(f"--data {path} is not a file: build test.parquet with search-r1-prepare-data")
    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise ValueError(f"--data {path} is not a readable parquet file: {exc}") from None
    missing = {"prompt", "reward_model", "data_source"} - set(table.column_names)
    if missing:
        raise ValueError(f"--data {path} lacks column(s) {sorted(missing)}: build it with search-r1-prepare-data")
    if table.num_rows == 0:
        raise ValueError(f"--data {path} has no rows")
    return table.slice(0, limit).to_pylist()


async def evaluate_row(
    index: int, sample_index: int, row: dict[str, Any], tokenizer, args: SimpleNamespace, params: dict
) -> dict[str, Any]:
    """Run one trajectory and score it; returns its JSONL record."""
    from generate_with_search import _assistant_turn, generate, resolve_config
    from qa_em import em_check, extract_solution, f1_score, subem_check
    from search_r1_slime.judge import judge_answer
    from search_r1_slime.rewards import question_of, score_sample

    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    sample = EvalSample(prompt=prompt, label=row["reward_model"])
    sample = await generate(args, sample, dict(params), evaluation=True)
    metrics = sample.metadata.get("search_r1", {})
    golden_answers = list(row["reward_model"]["ground_truth"]["target"])
    # Only a model turn's answer counts: the invalid-action message the model may have been shown
    # holds "<answer> and </answer>" too, which Search-R1's extraction would read as an answer.
    answer = extract_solution(sample.response) if metrics.get("answered") else None
    config = resolve_config(args)
    # The training reward's terms as slime's reward_func computes them (none when SGLang failed).
    failed = sample.status == EvalSample.Status.FAILED
    reward = None if failed else (await score_sample(sample, _assistant_turn(sample), golden_answers, config)).logged()
    judged = {}
    if getattr(args, "judge", False):
        verdict = await judge_answer(row.get("question") or question_of(prompt), golden_answers, answer, config["judge"])
        judged = {"judge": None if verdict.correct is None else int(verdict.correct), "judge_error": verdict.reason or None}
    return {
        "index": index,
        "sample": sample_index,
        "id": row.get("id"),
        "data_source": row["data_source"],
        "question": row.get("question"),
        "golden_answers": golden_answers,
        "prompt": prompt,
        "response": sample.response,
        "answer": answer,
        "em": em_check(answer, golden_answers) if answer is not None else 0,
        "f1": f1_score(answer, golden_answers) if answer is not None else 0.0,
        "cover_em": subem_check(answer, golden_answers) if answer is not None else 0,
        **judged,
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
    n_samples: int = 1,
    evaluate_one: Any = evaluate_row,
) -> list[dict[str, Any]]:
    """Evaluate every row ``n_samples`` times (``evaluate_one``: one trajectory's run and record),
    writing each record to ``output`` as it finishes; returns the records in (row, sample) order."""
    from generate_with_search import load_tokenizer
    from search_r1_slime.http_client import close_shared_session

    tokenizer = load_tokenizer(args.hf_checkpoint)
    semaphore = asyncio.Semaphore(max_concurrency)

    async def bounded(index: int, sample_index: int, row: dict[str, Any]) -> dict[str, Any]:
        async with semaphore:
            return await evaluate_one(index, sample_index, row, tokenizer, args, params)

    records = []
    output.parent.mkdir(parents=True, exist_ok=True)
    tasks = [asyncio.ensure_future(bounded(i, k, row)) for i, row in enumerate(rows) for k in range(n_samples)]
    try:
        with open(output, "w", encoding="utf-8") as out, tqdm(total=len(tasks), disable=not progress, desc="eval") as bar:
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
    return sorted(records, key=lambda r: (r["index"], r["sample"]))


@dataclass(frozen=True)
class SourceScores:
    """One data set's scores: means over every sample of every question (mean@K), and the share
    of questions with at least one exact match among their samples (pass@K)."""

    questions: int
    em: float
    f1: float
    cover_em: float
    em_pass: float
    # The training reward's terms (search_r1_slime.rewards), means over the scored samples.
    reward: dict[str, float] = field(default_factory=dict)
    # With --judge-url: the judge's mean over the judged samples, the share of questions with a
    # sample judged right, and the samples the judge left without a verdict.
    judge: float | None = None
    judge_pass: float | None = None
    unjudged: int = 0


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def scores_by_source(records: list[dict[str, Any]]) -> dict[str, SourceScores]:
    """data_source -> its scores, paper data sets first (in the paper's order), others after."""
    by_source: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_source.setdefault(record["data_source"], []).append(record)
    order = [s for s in PAPER_COLUMNS if s in by_source] + sorted(s for s in by_source if s not in PAPER_COLUMNS)
    scores = {}
    for source in order:
        records = by_source[source]
        best: dict[int, int] = {}
        judged_best: dict[int, int] = {}
        for record in records:
            best[record["index"]] = max(best.get(record["index"], 0), record["em"])
            if record.get("judge") is not None:
                judged_best[record["index"]] = max(judged_best.get(record["index"], 0), record["judge"])
        terms: dict[str, list[float]] = {}
        for record in records:
            for name, value in (record.get("reward") or {}).items():
                terms.setdefault(name, []).append(value)
        judged = [r["judge"] for r in records if r.get("judge") is not None]
        scores[source] = SourceScores(
            questions=len(best),
            em=_mean(r["em"] for r in records),
            f1=_mean(r["f1"] for r in records),
            cover_em=_mean(r["cover_em"] for r in records),
            em_pass=_mean(best.values()),
            reward={name: _mean(values) for name, values in terms.items()},
            judge=_mean(judged) if judged else None,
            # A question none of whose samples got a verdict is left out, not counted wrong.
            judge_pass=_mean(judged_best.values()) if judged_best else None,
            unjudged=sum("judge" in r and r["judge"] is None for r in records),
        )
    return scores


def format_reward_table(scores: dict[str, SourceScores]) -> str:
    """The training reward's terms (rows) per data set, in the main table's column order."""
    sources = [s for s in scores if scores[s].reward]
    names = list(dict.fromkeys(name for s in sources for name in scores[s].reward))
    header = ["reward term", *(PAPER_COLUMNS.get(s, s) for s in sources), "Avg"]
    rows = [[name, *(f"{scores[s].reward[name]:.3f}" if name in scores[s].reward else "-" for s in sources),
             f"{_mean(scores[s].reward[name] for s in sources if name in scores[s].reward):.3f}"] for name in names]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def format_table(scores: dict[str, SourceScores], n_samples: int = 1) -> str:
    """A Markdown table in the paper's layout; data sets not evaluated show '-'.

    Avg is the unweighted mean over the data sets evaluated, as in the paper. When any of the
    paper's data sets was evaluated, its Qwen2.5-3B rows follow for those data sets; their Avg is
    shown when every data set evaluated is one of the paper's.
    """
    sources = list(PAPER_COLUMNS) + [s for s in scores if s not in PAPER_COLUMNS]
    titles = [PAPER_COLUMNS.get(s, s) for s in sources] + ["Avg"]

    def score_row(values: dict[str, float], average: bool = True) -> list[str]:
        cells = [f"{values[s]:.3f}" if s in values else "-" for s in sources]
        return cells + [f"{_mean(values.values()):.3f}" if values and average else "-"]

    suffix = f" mean@{n_samples}" if n_samples > 1 else ""
    rows = [(f"{label}{suffix}", score_row({s: getattr(v, attr) for s, v in scores.items()}))
            for label, attr in (("EM", "em"), ("F1", "f1"), ("cover EM", "cover_em"))]
    if n_samples > 1:
        rows.append((f"EM pass@{n_samples}", score_row({s: v.em_pass for s, v in scores.items()})))
    if any(v.judge is not None for v in scores.values()):
        rows.append((f"judge{suffix}", score_row({s: v.judge for s, v in scores.items() if v.judge is not None})))
        if n_samples > 1:
            rows.append((f"judge pass@{n_samples}", score_row({s: v.judge_pass for s, v in scores.items() if v.judge_pass is not None})))
    counts = [str(scores[s].questions) if s in scores else "-" for s in sources]
    rows.append(("n", counts + [str(sum(v.questions for v in scores.values()))]))
    evaluated = [s for s in PAPER_COLUMNS if s in scores]
    if evaluated:
        # Their Avg only over the same columns as ours, else the two would average different sets.
        same_sets = len(evaluated) == len(scores)
        rows += [(f"{name} EM", score_row({s: paper[s] for s in evaluated}, same_sets)) for name, paper in PAPER_ROWS.items()]

    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(title), *(len(cells[i]) for _, cells in rows)) for i, title in enumerate(titles)]

    def line(label: str, values: list[str]) -> str:
        return "| " + " | ".join([label.ljust(label_width)] + [v.rjust(w) for v, w in zip(values, widths)]) + " |"

    rule = "|" + "|".join(["-" * (label_width + 2)] + ["-" * (w + 1) + ":" for w in widths]) + "|"
    return "\n".join([line("", titles), rule, *(line(label, cells) for label, cells in rows)])


def write_summary(path: Path, scores: dict[str, SourceScores], n_samples: int, failed: int, settings: dict[str, Any]) -> None:
    """The table as JSON, with what produced it, for comparing runs without parsing the table."""
    summary = {
        **settings,
        "n_samples": n_samples,
        "failed_trajectories": failed,
        "per_source": {source: asdict(value) for source, value in scores.items()},
        "average": {key: _mean(getattr(v, key) for v in scores.values()) for key in ("em", "f1", "cover_em", "em_pass")}
        if scores else {},
        "average_reward": {name: _mean(v.reward[name] for v in scores.values() if name in v.reward)
                           for name in dict.fromkeys(n for v in scores.values() for n in v.reward)},
        "average_judge": {key: _mean(values) for key in ("judge", "judge_pass")
                          if (values := [getattr(v, key) for v in scores.values() if getattr(v, key) is not None])},
        "paper_em": {name: {s: paper[s] for s in PAPER_COLUMNS if s in scores} for name, paper in PAPER_ROWS.items()},
    }
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def summary_path(output: Path) -> Path:
    """``eval.jsonl`` -> ``eval.summary.json``, next to the trajectories."""
    return output.with_name(output.stem + ".summary.json")


def _sglang_address(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port
    except ValueError:  # a port out of range or not a number, an unclosed [IPv6 address
        parts, port = None, None
    if parts is None or parts.scheme != "http" or not parts.hostname or not port:
        raise ValueError(f"--sglang-url must look like http://HOST:PORT, got {url!r}")
    return parts.hostname, port


def sglang_problem(host: str, port: int, timeout_s: float = 5.0) -> str | None:
    """None when something answers HTTP at SGLang's address (any status: the router and old
    engines differ in what they serve), else why not."""
    url = f"http://{host}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except OSError as exc:
        return (
            f"SGLang at http://{host}:{port} is not answering ({getattr(exc, 'reason', exc)}): start it "
            "(python -m sglang.launch_server --model-path ... --port ...) or pass --sglang-url"
        )


def tokenizer_problem(hf_checkpoint: str, messages: list[dict[str, str]]) -> str | None:
    """None when the checkpoint's tokenizer loads and its chat template renders ``messages`` (a
    row's prompt), else why not."""
    from generate_with_search import load_tokenizer

    try:
        tokenizer = load_tokenizer(hf_checkpoint)
    except (OSError, ValueError) as exc:
        return f"cannot load the tokenizer of --hf-checkpoint {hf_checkpoint}: {one_line(exc)}"
    if not getattr(tokenizer, "chat_template", None):
        return (
            f"the tokenizer of --hf-checkpoint {hf_checkpoint} has no chat template, and every prompt is rendered "
            "with it (as slime's --apply-chat-template does): use a checkpoint whose tokenizer_config.json has one"
        )
    try:
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # the template's own error (jinja2's, or transformers' ValueError): shown, not a traceback
        return f"the chat template of --hf-checkpoint {hf_checkpoint} cannot render the prompts: {one_line(exc)}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="search-r1-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="test.parquet from search-r1-prepare-data")
    parser.add_argument("--questions", type=Path, help="instead of --data: a GAIA / xBench / Frames-style question file (JSONL, JSON, CSV or TSV) for deep-research mode, judged by search_r1.judge")
    parser.add_argument("--question-key", default="question", help="with --questions: the field holding the question")
    parser.add_argument("--answer-key", default="answer", help="with --questions: the field holding the gold answer (a string or a list)")
    parser.add_argument("--data-source", help="with --questions: the data set's name in the table (default: the file's stem)")
    parser.add_argument("--hf-checkpoint", required=True, help="the served model's HF folder (its tokenizer is used)")
    parser.add_argument("--sglang-url", default="http://127.0.0.1:30000", help="SGLang server (or router) address")
    parser.add_argument("--config", type=Path, help="YAML with a search_r1: mapping, as given to slime's --custom-config-path (default: the plugin's defaults)")
    parser.add_argument("--output", type=Path, default=Path("eval_trajectories.jsonl"), help="JSONL of every trajectory; the summary goes next to it")
    parser.add_argument("--max-response-len", type=int, default=512, help="token budget of a whole response, as --rollout-max-response-len")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy, as in the paper")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    parser.add_argument("--n-samples", type=int, default=1, help="samples per question, for mean@K and pass@K; above 1 needs --temperature > 0")
    parser.add_argument("--max-concurrency", type=int, default=64, help="trajectories in flight at once")
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows (default: all)")
    parser.add_argument("--skip-preflight", action="store_true", help="do not check the search backend first")
    parser.add_argument("--replay", type=Path, metavar="FILE",
                        help="answer every search from this search database (search_r1.search_db, strict replay): "
                             "no search backend is asked, none needs to run; a search it lacks stops the evaluation")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--judge-url", help="an LLM judge's /v1/chat/completions URL: adds its verdicts as a 'judge' row "
                        "(its other settings and key: search_r1.judge in --config, or JUDGE_API_KEY)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    cli = parser.parse_args(argv)
    RETRIEVER.require(parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if cli.max_concurrency < 1 or cli.max_response_len < 1 or cli.n_samples < 1:
        parser.refuse("--max-concurrency, --max-response-len and --n-samples must be at least 1")
    if cli.limit is not None and cli.limit < 1:
        parser.refuse(f"--limit must be at least 1, got {cli.limit}")
    if not 0 <= cli.temperature < float("inf") or not 0 < cli.top_p <= 1:  # NaN fails both
        parser.refuse("--temperature must be at least 0 and --top-p above 0 and at most 1")
    if cli.n_samples > 1 and cli.temperature == 0:
        parser.refuse("--n-samples > 1 needs --temperature > 0: greedy decoding gives the same answer every time")
    if (cli.data is None) == (cli.questions is None):
        parser.refuse("give --data (a Search-R1 test.parquet) or --questions (a deep-research question file), one of them")
    if cli.output.is_dir():
        parser.refuse(f"--output {cli.output} is a directory; name the JSONL file to write")
    try:
        check_output("--output", cli.output, make_folders=True)  # and the summary beside it
        host, port = _sglang_address(cli.sglang_url)
    except ValueError as exc:
        parser.refuse(str(exc))

    from generate_with_search import resolve_config
    from search_r1_slime import search_db
    from search_r1_slime.preflight import judge_problem, load_search_overrides, search_problems
    from search_r1_slime.settings import ConfigError

    # Every check before the first trajectory (and before the output is created), cheap ones
    # first: the files, then the servers, then the tokenizer (transformers takes seconds to load).
    # One line per problem.
    try:
        overrides = load_search_overrides(cli.config)
        if cli.judge_url is not None:
            overrides = {**overrides, "judge": {**(overrides.get("judge") or {}), "url": cli.judge_url}}
        if cli.replay is not None:
            overrides = {**overrides, "search_db": {**overrides.get("search_db", {}), "path": str(cli.replay),
                                                    "replay": "strict", "record": False}}
        config = resolve_config(SimpleNamespace(search_r1=overrides))  # checked even with --skip-preflight
        if config["search_db"]["path"] is not None:
            search_db.database(config["search_db"]).check()
        if cli.questions is not None:
            from search_r1_slime.web_eval import read_questions

            rows = read_questions(cli.questions, cli.question_key, cli.answer_key, cli.data_source, cli.limit)
            if config["judge"]["url"] is None:
                raise ValueError("--questions is scored by the LLM judge: pass --judge-url or set search_r1.judge.url in the --config YAML")
        else:
            rows = read_rows(cli.data, cli.limit)
        check_model("--hf-checkpoint", cli.hf_checkpoint)
    except ConfigError as exc:
        problems = exc.problems
    except (OSError, ValueError) as exc:  # SearchDbError included
        problems = [str(exc)]
    else:
        problems = []
    if not problems:
        problems = [p for p in [sglang_problem(host, port)] if p is not None]
        if not cli.skip_preflight and cli.replay is None:
            problems += search_problems(overrides)
        if cli.questions is not None or cli.judge_url is not None or config["reward"] == "judge":
            problems += [p for p in [judge_problem(config["judge"])] if p]
    if not problems:
        # A --questions row's prompt is made per trajectory (web_eval): its question stands in here.
        first = rows[0].get("prompt") or [{"role": "user", "content": rows[0]["question"]}]
        problems = [p for p in [tokenizer_problem(cli.hf_checkpoint, first)] if p is not None]
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
        judge=cli.judge_url is not None,
    )
    params = sampling_params(cli.max_response_len, cli.temperature, cli.top_p)
    try:
        if cli.questions is not None:
            from search_r1_slime.web_eval import evaluate_question

            records = asyncio.run(run_evaluation(
                rows, args, params, cli.output, cli.max_concurrency, not cli.no_progress, cli.n_samples, evaluate_question
            ))
            return _report_web(cli, rows, records)
        records = asyncio.run(
            run_evaluation(rows, args, params, cli.output, cli.max_concurrency, not cli.no_progress, cli.n_samples)
        )
    except (search_db.ReplayError, search_db.SearchDbError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1

    failed = [record for record in records if record["status"] == EvalSample.Status.FAILED.value]
    failure = (
        f"{len(failed)} of {len(records)} trajectories failed: SGLang could not generate them "
        f"(first error: {one_line(failed[0]['error'])}; each failed record's 'error' in {cli.output})"
        if failed else ""
    )
    if len(failed) == len(records):  # nothing was evaluated: a table of zeros would be a lie
        print(f"ERROR: {failure}", file=sys.stderr)
        return 1
    scores = scores_by_source(records)
    summary = summary_path(cli.output)
    settings = {"data": str(cli.data), "questions": len(rows), "temperature": cli.temperature, "top_p": cli.top_p,
                "max_response_len": cli.max_response_len, "trajectories": str(cli.output)}
    write_summary(summary, scores, cli.n_samples, len(failed), settings)
    samples = f" x {cli.n_samples} samples" if cli.n_samples > 1 else ""
    print(f"Scores of {len(rows)} question{'' if len(rows) == 1 else 's'}{samples} (trajectories in {cli.output}, summary in {summary});")
    if any(v.reward for v in scores.values()):
        print(f"Training reward (search_r1.reward: {resolve_config(args)['reward']}), its terms' means (docs/rewards.md):")
        print(format_reward_table(scores))
    unjudged = sum(v.unjudged for v in scores.values())
    if unjudged:
        print(f"The judge gave no verdict for {unjudged} sample(s) (each record's 'judge_error'); the judge row leaves them out.")
    print("Search-R1 rows: the paper's Qwen2.5-3B GRPO exact match, averaged over the same data sets.")
    print(format_table(scores, cli.n_samples))
    if failed:
        print(f"ERROR: {failure}; the table counts them as wrong.", file=sys.stderr)
        return 1
    return 0


def _report_web(cli: argparse.Namespace, rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> int:
    """Print and save the deep-research table; 1 when a trajectory failed or an answer went unjudged."""
    from search_r1_slime.web_eval import format_web_table, web_scores, write_web_summary

    failed = [record for record in records if record["status"] == EvalSample.Status.FAILED.value]
    scores = web_scores(records)
    summary = summary_path(cli.output)
    settings = {"questions_file": str(cli.questions), "questions": len(rows), "temperature": cli.temperature,
                "top_p": cli.top_p, "max_response_len": cli.max_response_len, "trajectories": str(cli.output)}
    write_web_summary(summary, scores, cli.n_samples, len(failed), settings)
    print(f"Judged scores of {len(rows)} questions x {cli.n_samples} samples (trajectories in {cli.output}, summary in {summary}):")
    print(format_web_table(scores, cli.n_samples))
    unjudged = sum(s.unjudged for s in scores.values())
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {len(records)} trajectories failed (first error: {one_line(failed[0]['error'])})")
    if unjudged:
        first = next(r["judge_reason"] for r in records if r["correct"] is None)
        problems.append(f"{unjudged} answers got no verdict from the judge (first reason: {one_line(first)})")
    for problem in problems:
        print(f"ERROR: {problem}; the table counts them as wrong.", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
