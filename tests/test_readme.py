"""The READMEs: the English and Chinese versions keep the same outline, and the commands of ours
that cannot run here (they need the Hub, GPUs or a trained model) at least parse as written."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

from local_dense_retriever import download, retrieval_server
from search_r1_slime import evaluate, prepare_data
from tests.test_evaluate import EXPECTED_TABLE

REPO = Path(__file__).resolve().parent.parent
READMES = [REPO / "README.md", REPO / "README_zh.md"]


def bash_commands(text: str) -> list[list[str]]:
    """Every command of every ```bash block, backslash continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(shlex.split(command, comments=True))
    return commands


def outline(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return [line.split(" ", 1)[0] for line in text.splitlines() if line.startswith("#")]


def test_both_readmes_have_the_same_outline():
    english, chinese = (outline(path.read_text(encoding="utf-8")) for path in READMES)
    assert english == chinese


def test_readme_commands_of_our_scripts_parse():
    for path in READMES:
        commands = bash_commands(path.read_text(encoding="utf-8"))
        ours = {
            "search-r1-prepare-data": prepare_data.build_parser(),
            "search-r1-evaluate": evaluate.build_parser(),
            "local_dense_retriever.retrieval_server": retrieval_server.build_parser(),
            "local_dense_retriever.download": download.build_parser(),
        }
        seen = set()
        for argv in commands:
            # "python -m module ..." is named by its module, a console script by itself.
            name, rest = (argv[2], argv[3:]) if argv[:2] == ["python", "-m"] else (argv[0], argv[1:])
            if name in ours:
                ours[name].parse_args(rest)  # exits (SystemExit) on an unknown flag
                seen.add(name)
        assert seen == set(ours), path


def test_readme_shows_the_table_evaluate_prints():
    for path in READMES:
        assert EXPECTED_TABLE in path.read_text(encoding="utf-8")


def test_every_module_is_in_both_readmes_file_tables():
    modules = [p for p in (*REPO.glob("*.py"), *REPO.glob("local_dense_retriever/*.py"), *REPO.glob("search_r1_slime/*.py"))
               if p.name != "__init__.py"]
    for path in READMES:
        text = path.read_text(encoding="utf-8")
        missing = [m.name for m in modules if f"{m.name}`" not in text]
        assert not missing, f"{path.name} does not say what these modules are for: {missing}"


def _quoted(text: str, pattern: str) -> list[float]:
    """Every number the README gives where ``pattern`` (one group: the number) matches."""
    return [float(value) for value in re.findall(pattern, text)]


def _readme_claims() -> list[tuple[str, str, float]]:
    """(English pattern, Chinese pattern, the code's value) for every number the READMEs quote
    from a constant or default of the code."""
    from local_dense_retriever.server_config import DEFAULT_RERANK_CANDIDATES, ServerConfig
    from search_r1_slime.http_client import RetryPolicy
    from search_r1_slime.settings import DEFAULTS

    policy = RetryPolicy()  # the search backends' policy: only the deadline and attempt timeout differ
    server = retrieval_server.build_parser()
    evaluation = evaluate.build_parser()
    config = ServerConfig(index_path="index", corpus_path="corpus")
    return [
        # Failover between servers (Several nodes) and the retry back-off (Configuration).
        (r"back-off of\s+up to ([\d.]+) s after its first failure", r"第一次失败后最多 ([\d.]+) 秒", policy.backoff_base_s),
        (r"doubling with every failed probe up to ([\d.]+) s", r"每次探测失败翻倍，最多 ([\d.]+) 秒", policy.backoff_max_s),
        (r"within about ([\d.]+) s;", r"约 ([\d.]+) 秒内就回到轮询中", policy.backoff_max_s),
        (r"jittered backoff of at most ([\d.]+) s", r"退避带抖动、最长 ([\d.]+) 秒", policy.backoff_max_s),
        (r"`search_timeout` \(([\d.]+) s\)", r"`search_timeout`（([\d.]+) 秒）", DEFAULTS.search_timeout),
        (r"`local.attempt_timeout` \(([\d.]+) s\)", r"`local.attempt_timeout`（([\d.]+) 秒）", DEFAULTS.local.attempt_timeout),
        # The retrieval server's limits and defaults.
        (r"binds 127\.0\.0\.1:(\d+)", r"绑定 127\.0\.0\.1:(\d+)", server.get_default("port")),
        (r"`--max_queries_per_request` (\d+)", r"`--max_queries_per_request`（(\d+)）", server.get_default("max_queries_per_request")),
        (r"`--max_query_chars` (\d+)", r"`--max_query_chars`（(\d+)）", server.get_default("max_query_chars")),
        (r"about\s+(\d+) MiB\)", r"约 (\d+) MiB", round(config.body_limit / 2**20)),
        (r"`--body_timeout_s` \(([\d.]+) s\)", r"`--body_timeout_s`（([\d.]+) 秒）", server.get_default("body_timeout_s")),
        (r"`--max_topk`, (\d+)[;)]", r"`--max_topk`，即 (\d+)[；）]", server.get_default("max_topk")),
        (r"`--retrieval_topk` \(default (\d+)", r"`--retrieval_topk`（设置重排序器时默认 (\d+)）", DEFAULT_RERANK_CANDIDATES),
        (r"`--reranker_batch_size` \((\d+)\) pairs", r"`--reranker_batch_size`（(\d+)）对", server.get_default("reranker_batch_size")),
        (r"`--reranker_max_length`\s+\((\d+)\)", r"`--reranker_max_length`（(\d+)）", server.get_default("reranker_max_length")),
        # The evaluation command.
        (r"`--max-concurrency` \(default (\d+)\)", r"`--max-concurrency`（默认 (\d+)）", evaluation.get_default("max_concurrency")),
        (r"`--max-response-len (\d+)`", r"`--max-response-len (\d+)`", evaluation.get_default("max_response_len")),
    ]


def test_numbers_the_readmes_quote_are_the_codes():
    english, chinese = (path.read_text(encoding="utf-8") for path in READMES)
    for english_pattern, chinese_pattern, value in _readme_claims():
        for text, pattern in ((english, english_pattern), (chinese, chinese_pattern)):
            quoted = _quoted(text, pattern)
            assert quoted, f"the README no longer says {pattern!r}: update this test with it"
            assert set(quoted) == {float(value)}, f"{pattern!r}: the README says {quoted}, the code {value}"


def test_configuration_tables_show_the_schemas_defaults():
    from search_r1_slime.settings import DEFAULTS

    defaults = {**DEFAULTS.model_dump(), **{f"{backend}.{key}": value for backend in ("local", "google")
                                            for key, value in getattr(DEFAULTS, backend).model_dump().items()}}
    for path in READMES:
        rows = re.findall(r"^\| (`[a-z_.]+`(?: / `[a-z_.]+`)*) \| `([^`]*)` \|", path.read_text(encoding="utf-8"), re.MULTILINE)
        assert len(rows) >= 20, path
        for keys, shown in rows:
            for key in re.findall(r"`([a-z_.]+)`", keys):
                assert ast.literal_eval(shown) == defaults[key], f"{path.name}: {key} shown as {shown}, default {defaults[key]!r}"
