"""The documentation (README.md and docs/, each page with its Chinese twin): both languages keep the
same outline, links lead to pages and headings that exist, and the commands of ours that cannot run
here (they need the Hub, GPUs or a trained model) at least parse as written."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from local_dense_retriever import download, retrieval_server
from search_r1_slime import evaluate, prepare_data
from tests.documentation import REPO, english_pages, page_pairs, pages, text
from tests.test_evaluate import EXPECTED_TABLE

READMES = [REPO / "README.md", REPO / "README_zh.md"]
LANGUAGES = ["en", "zh"]


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


def test_every_page_has_a_chinese_twin_with_the_same_outline():
    pairs = page_pairs()
    assert len(pairs) >= 12  # README and the docs/ pages it links
    for english, chinese in pairs:
        assert chinese.exists(), f"{english.name} has no Chinese twin {chinese.name}"
        assert outline(english.read_text(encoding="utf-8")) == outline(chinese.read_text(encoding="utf-8")), chinese.name
    strays = {p.name for p in (REPO / "docs").glob("*_zh.md")} - {chinese.name for _, chinese in pairs}
    assert not strays, f"Chinese pages without an English one: {strays}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (letters of any script,
    digits, "_" and "-" kept), each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    body = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {slug(line.lstrip("#")) for line in body.splitlines() if line.startswith("#")}


def test_slug_follows_githubs_rule():
    assert slug("Keys and W&B") == "keys-and-wb"
    assert slug("Evaluation (`--eval-config`)") == "evaluation---eval-config"
    assert slug("Qwen3 及其他对话模板") == "qwen3-及其他对话模板"


def test_every_link_between_pages_leads_to_a_page_and_heading_that_exist():
    for english, chinese in page_pairs():
        for page in (english, chinese):
            body = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
            for target in re.findall(r"\]\(([^)\s]+)\)", body):
                if re.match(r"[a-z]+:", target):
                    continue  # another site
                path, _, anchor = target.partition("#")
                linked = (page.parent / path).resolve() if path else page
                assert linked.exists(), f"{page.name} links {target}: no such file"
                if anchor and linked.suffix == ".md":
                    assert anchor in anchors(linked), f"{page.name} links {target}: no such heading"


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_further_reading_ends_the_readme_and_links_every_page_of_its_language(readme):
    text_ = readme.read_text(encoding="utf-8")
    heading = "## Further reading" if readme.name == "README.md" else "## 延伸阅读"
    assert heading in text_
    last_section = text_.split(heading, 1)[1]
    assert "\n## " not in last_section, "Further reading is the README's last section"
    linked = {(readme.parent / target).resolve() for target in re.findall(r"\]\((docs/[^)#\s]+)\)", last_section)}
    language = "en" if readme.name == "README.md" else "zh"
    assert linked == set(pages(language)[1:])


def test_the_readme_is_a_short_path():
    # What it is, install, the demo, the tests, a training run, further reading; the rest is in docs/.
    for readme in READMES:
        assert len(readme.read_text(encoding="utf-8").splitlines()) <= 200, readme.name


@pytest.mark.parametrize("language", LANGUAGES)
def test_commands_of_our_scripts_parse(language):
    commands = bash_commands(text(language))
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
    assert seen == set(ours), language


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_evaluation_page_shows_the_table_evaluate_prints(language):
    assert EXPECTED_TABLE in text(language)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_module_is_in_the_architecture_tables(language):
    modules = [p for p in (*REPO.glob("*.py"), *REPO.glob("local_dense_retriever/*.py"), *REPO.glob("search_r1_slime/*.py"))
               if p.name != "__init__.py"]
    text_ = text(language)
    missing = [m.name for m in modules if f"{m.name}`" not in text_]
    assert not missing, f"the {language} documentation does not say what these modules are for: {missing}"


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


def test_numbers_the_documentation_quotes_are_the_codes():
    english, chinese = text("en"), text("zh")
    for english_pattern, chinese_pattern, value in _readme_claims():
        for language_text, pattern in ((english, english_pattern), (chinese, chinese_pattern)):
            quoted = _quoted(language_text, pattern)
            assert quoted, f"the documentation no longer says {pattern!r}: update this test with it"
            assert set(quoted) == {float(value)}, f"{pattern!r}: the documentation says {quoted}, the code {value}"


def test_configuration_tables_show_the_schemas_defaults():
    from search_r1_slime.settings import DEFAULTS

    defaults = {**DEFAULTS.model_dump(), **{f"{backend}.{key}": value for backend in ("local", "google")
                                            for key, value in getattr(DEFAULTS, backend).model_dump().items()}}
    for page in (REPO / "docs" / "configuration.md", REPO / "docs" / "configuration_zh.md"):
        rows = re.findall(r"^\| (`[a-z_.]+`(?: / `[a-z_.]+`)*) \| `([^`]*)` \|", page.read_text(encoding="utf-8"), re.MULTILINE)
        assert len(rows) >= 20, page.name
        for keys, shown in rows:
            for key in re.findall(r"`([a-z_.]+)`", keys):
                assert ast.literal_eval(shown) == defaults[key], f"{page.name}: {key} shown as {shown}, default {defaults[key]!r}"


REWARD_PAGES = [*READMES, REPO / "docs" / "rewards.md", REPO / "docs" / "rewards_zh.md"]


def reward_recipes(page: Path) -> dict[str, dict]:
    """Each recipe row of ``page``'s tables: its name and the ``search_r1:`` settings it shows
    (every backticked ``key: value`` of its second cell, the judge's URL filled in)."""
    import yaml

    recipes = {}
    for name, cell in re.findall(r"^\| ([^|`]+?) \| ([^|]*`[a-z_]+: [^|]*) \|", page.read_text(encoding="utf-8"), re.MULTILINE):
        settings = {}
        for item in re.findall(r"`([a-z_]+: [^`]+)`", cell):
            settings.update(yaml.safe_load(item.replace("...", "http://127.0.0.1:30000/v1/chat/completions")))
        recipes[name] = settings
    return recipes


@pytest.mark.parametrize("page", REWARD_PAGES, ids=lambda p: p.name)
def test_every_reward_recipe_shown_is_a_configuration_the_plugin_takes(page):
    from search_r1_slime.settings import SearchR1Config

    recipes = reward_recipes(page)
    assert len(recipes) >= 6, recipes
    for name, settings in recipes.items():
        SearchR1Config.checked(settings)  # one line per mistake if a recipe could not start
    search_r1_pp = next(settings for name, settings in recipes.items() if "Search-R1++" in name)
    assert search_r1_pp == {"reward": "f1", "format_score": 0, "no_search_penalty": 0.1, "no_answer_penalty": 0.1}


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_readmes_reward_recipes_are_the_reward_pages(language):
    from search_r1_slime.settings import SearchR1Config

    suffix = "" if language == "en" else "_zh"
    resolved = [{page: SearchR1Config.checked(settings).model_dump() for page, settings in reward_recipes(REPO / name).items()}
                for name in (f"README{suffix}.md", f"docs/rewards{suffix}.md")]
    readme, page = resolved
    assert all(config in page.values() for config in readme.values())
