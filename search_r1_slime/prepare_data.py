"""Build Search-R1's train.parquet and test.parquet from FlashRAG's QA datasets, without verl.

    search-r1-prepare-data --local-dir data/nq_hotpotqa_train                  # from the Hub
    search-r1-prepare-data --local-dir data/nq_hotpotqa_train --flashrag-dir /data/FlashRAG_datasets

(``python -m search_r1_slime.prepare_data`` is the same command.)

The rows are Search-R1's (``scripts/data_process/qa_search_{train,test}_merge.py``, template
"base"), so a model trained there and here sees the same prompt, and slime reads them with
``--input-key prompt --label-key reward_model --apply-chat-template``:

    data_source   "nq", "hotpotqa", ...
    prompt        [{"role": "user", "content": <instruction + question>}]
    ability       "fact-reasoning"
    reward_model  {"style": "rule", "ground_truth": {"target": [gold answers]}}
    extra_info    {"split": "train" | "test", "index": <row number within its dataset>}

plus FlashRAG's ``id``, the normalised ``question`` and ``golden_answers`` for reading results.
FlashRAG's free-form ``metadata`` is left out: its shape differs between datasets, and slime would
take a ``metadata`` column as each sample's metadata.

The source is ``RUC-NLPIR/FlashRAG_datasets`` (one folder per dataset holding ``train.jsonl``,
``dev.jsonl`` and/or ``test.jsonl``), downloaded with huggingface_hub, or a local copy of it with
the same layout. The test file takes each dataset's test split, else dev, else train, as
Search-R1 does; its rows keep the order of the sources given (not shuffled). With
``--per-source-test`` each test dataset is also written alone, ``test_<dataset>.parquet`` (the
same rows), so that slime's periodic evaluation can score every dataset under its own name.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from local_dense_retriever.cli import ArgumentParser, ExtraImports, check_folder

with ExtraImports("retriever") as RETRIEVER:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The rows' layout, of pyarrow's types: built here, so that the module imports (and --help
    # works) without the extra.
    SCHEMA = pa.schema(
        [
            ("id", pa.string()),
            ("question", pa.string()),
            ("golden_answers", pa.list_(pa.string())),
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("ability", pa.string()),
            (
                "reward_model",
                pa.struct(
                    [("style", pa.string()), ("ground_truth", pa.struct([("target", pa.list_(pa.string()))]))]
                ),
            ),
            ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64())])),
        ]
    )

logger = logging.getLogger(__name__)

FLASHRAG_REPO = "RUC-NLPIR/FlashRAG_datasets"
TRAIN_SOURCES = ("nq", "hotpotqa")
# The seven QA sets of the Search-R1 paper, in the order of its results table.
TEST_SOURCES = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
TEST_SPLIT_PREFERENCE = ("test", "dev", "train")

# Search-R1's "base" instruction, verbatim: the model is trained on exactly this text.
PROMPT_TEMPLATE = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new information. "
    "After reasoning, if you find you lack some knowledge, you can call a search engine by <search> query </search> "
    "and it will return the top searched results between <information> and </information>. "
    "You can search as many times as your want. "
    "If you find no further external knowledge needed, you can directly provide the answer inside <answer> and "
    "</answer>, without detailed illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)

# Deep-research mode's two-tool instruction (search_r1.access, docs/deep_research.md), in our own
# words. The design, a search tool plus a page-reading tool named by the <access> tag over many
# turns, follows ASearcher (Gao et al., 2025, "Beyond Ten Turns: Unlocking Long-Horizon Agentic
# Search with Large-Scale Asynchronous RL", https://github.com/inclusionAI/ASearcher); the
# think/search/information/answer tags stay Search-R1's, so its format check still applies.
DEEP_RESEARCH_PROMPT_TEMPLATE = (
    "Answer the given question. Reason inside <think> and </think> every time you get new information. "
    "You have two tools and may call one per turn, as many turns as you need. "
    "To search the web, write <search> query </search>: the results come back between <information> and "
    "</information>, each with the URL of its page. "
    "To read one of those pages, write <{access_tag}> URL </{access_tag}>: the main text of the page comes back "
    "between <information> and </information>. Snippets can be misleading, so read the pages that matter. "
    "When you are confident, give the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. Question: {question}\n"
)


def normalize_question(question: str) -> str:
    """Search-R1's normalisation: strip, and end with a question mark."""
    question = question.strip()
    return question if question.endswith("?") else question + "?"


def make_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


def make_deep_research_prompt(question: str, access_tag: str = "access") -> str:
    """The two-tool instruction; ``access_tag``: ``search_r1.access.tag``."""
    return DEEP_RESEARCH_PROMPT_TEMPLATE.format(question=question, access_tag=access_tag)


# --prompt's choices: which instruction the rows carry.
PROMPTS = {"search-r1": make_prompt, "deep-research": make_deep_research_prompt}


def make_row(
    example: dict[str, Any], data_source: str, split: str, index: int, prompt: Callable[[str], str] = make_prompt
) -> dict[str, Any]:
    """One Search-R1 row from one FlashRAG record (``id``, ``question``, ``golden_answers``)."""
    question = normalize_question(example["question"])
    answers = [str(answer) for answer in example["golden_answers"]]
    return {
        "id": str(example.get("id", index)),
        "question": question,
        "golden_answers": answers,
        "data_source": data_source,
        "prompt": [{"role": "user", "content": prompt(question)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
        "extra_info": {"split": split, "index": index},
    }


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc})") from exc
            if not isinstance(record, dict) or not str(record.get("question", "")).strip():
                raise ValueError(f"{path}:{line_no}: a FlashRAG record needs a non-empty 'question'")
            if not isinstance(record.get("golden_answers"), list):
                raise ValueError(f"{path}:{line_no}: a FlashRAG record needs a 'golden_answers' list")
            yield record


def split_file(flashrag_dir: Path, data_source: str, preference: tuple[str, ...]) -> Path:
    """The first of ``preference``'s splits that the dataset has."""
    folder = flashrag_dir / data_source
    for split in preference:
        path = folder / f"{split}.jsonl"
        if path.is_file():
            return path
    wanted = " or ".join(f"{split}.jsonl" for split in preference)
    raise FileNotFoundError(f"{folder} has no {wanted}: is '{data_source}' a FlashRAG dataset name?")


def read_source(flashrag_dir: Path, source: str, split: str, prompt: Callable[[str], str] = make_prompt) -> pa.Table:
    """One dataset's rows for ``split`` ("train" or "test"); ValueError when its file holds none."""
    path = split_file(flashrag_dir, source, ("train",) if split == "train" else TEST_SPLIT_PREFERENCE)
    rows = [make_row(record, source, split, i, prompt) for i, record in enumerate(read_jsonl(path))]
    if not rows:
        raise ValueError(f"{path}: no records (one JSON object a line expected); is the download complete?")
    logger.info("%s: %d rows from %s", source, len(rows), path)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_parquet(out_path: Path, tables: list[pa.Table]) -> int:
    """Write ``tables`` one after the other into one parquet; returns the row count."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_suffix(".parquet.tmp")
    try:
        with pq.ParquetWriter(tmp_path, SCHEMA) as writer:
            for table in tables:
                writer.write_table(table)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    tmp_path.replace(out_path)  # never a half-written file under the final name
    return sum(len(table) for table in tables)


def per_source_test_path(local_dir: Path, data_source: str) -> Path:
    """Where ``--per-source-test`` writes one dataset's test rows (the launch script reads them)."""
    return local_dir / f"test_{data_source}.parquet"


def download_flashrag(sources: list[str], repo_id: str = FLASHRAG_REPO, revision: str | None = None) -> Path:
    """Fetch only the named datasets' JSONL files from the Hub (cached, resumable)."""
    from huggingface_hub import snapshot_download

    from local_dense_retriever.download import from_the_hub

    offline = f"copy the data set repository {repo_id} (one folder per data set) onto this machine and pass --flashrag-dir DIR"
    with from_the_hub(f"download {repo_id}", offline):
        path = snapshot_download(
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            allow_patterns=[f"{source}/*.jsonl" for source in sources],
        )
    return Path(path)


def _source_list(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="search-r1-prepare-data", description=__doc__.splitlines()[0])
    parser.add_argument("--local-dir", "--local_dir", required=True, type=Path, help="where the parquet files go")
    parser.add_argument(
        "--train-sources", "--data_sources", default=",".join(TRAIN_SOURCES), type=_source_list,
        help="comma-separated FlashRAG datasets for train.parquet ('' to skip it; default: %(default)s)",
    )
    parser.add_argument(
        "--test-sources", default=",".join(TEST_SOURCES), type=_source_list,
        help="comma-separated FlashRAG datasets for test.parquet ('' to skip it; default: %(default)s)",
    )
    parser.add_argument(
        "--per-source-test", action="store_true",
        help="also write test_<dataset>.parquet for each test dataset (for per-dataset evaluation during training)",
    )
    parser.add_argument(
        "--prompt", choices=sorted(PROMPTS), default="search-r1",
        help="the instruction: Search-R1's, or deep-research mode's two tools (search_r1.access, tag 'access')",
    )
    parser.add_argument("--flashrag-dir", type=Path, help="a local copy of FlashRAG_datasets, for machines without Hub access (default: download from the Hub)")
    parser.add_argument("--repo-id", default=FLASHRAG_REPO, help="Hub dataset repository to download from")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) to pin the data to (default: the newest)")
    parser.add_argument("--no-progress", action="store_true", help="hide the download's progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    RETRIEVER.require(parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.train_sources and not args.test_sources:
        parser.refuse("--train-sources and --test-sources are both empty: nothing to write")
    if args.flashrag_dir is not None and not args.flashrag_dir.is_dir():
        parser.refuse(f"--flashrag-dir {args.flashrag_dir} is not a directory")
    try:
        check_folder("--local-dir", args.local_dir)
    except ValueError as exc:
        parser.refuse(str(exc))
    if args.no_progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    from local_dense_retriever.download import DownloadError

    try:
        _prepare(args)
    # A dataset without the split, a broken record, the Hub out of reach, a --local-dir that cannot be written.
    except (OSError, ValueError, DownloadError) as exc:
        logger.error("error: %s", exc)
        return 1
    return 0


def _prepare(args: argparse.Namespace) -> None:
    flashrag_dir = args.flashrag_dir
    if flashrag_dir is None:
        flashrag_dir = download_flashrag(sorted({*args.train_sources, *args.test_sources}), args.repo_id, args.revision)
    outputs = [(args.local_dir / "train.parquet", args.train_sources, "train"), (args.local_dir / "test.parquet", args.test_sources, "test")]
    if args.per_source_test:
        outputs += [(per_source_test_path(args.local_dir, source), [source], "test") for source in args.test_sources]
    # Every source is read and checked before the first file is written: a mistake in the last
    # one leaves nothing behind.
    prompt = PROMPTS[args.prompt]
    tables = {(source, split): read_source(flashrag_dir, source, split, prompt) for _, sources, split in outputs for source in sources}
    for path, sources, split in outputs:
        if sources:
            rows = write_parquet(path, [tables[source, split] for source in sources])
            logger.info("wrote %s: %d rows (%s)", path, rows, ",".join(sources))


if __name__ == "__main__":
    raise SystemExit(main())
