"""search-r1-preflight as a user runs it: against a loopback retrieval server, with the token
right, wrong or missing, and with YAML files a user gets wrong. What it prints is what is
asserted: one line per problem and exit 1, or one line saying all is well and exit 0."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from search_r1_slime import preflight
from tests.fakes.retriever import FakeRetriever

TOKEN = "tok-0123456789abcdef"


async def run_preflight(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environment = {k: v for k, v in os.environ.items() if k != "RETRIEVAL_API_KEY"} | (env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search_r1_slime.preflight", *args, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, stdout.decode(), stderr.decode()


def config_file(tmp_path: Path, search_url: str, section: str = "search_r1") -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(f"{section}:\n  local:\n    search_url: {search_url}\n")
    return path


async def test_a_wrong_token_fails_with_one_line_and_is_never_printed(tmp_path):
    async with FakeRetriever({preflight.PROBE_QUERY: []}, api_key=TOKEN) as retriever:
        config = config_file(tmp_path, retriever.search_url)
        code, stdout, stderr = await run_preflight("--config", str(config), env={"RETRIEVAL_API_KEY": "not-the-token-at-all"})
        missing = await run_preflight("--config", str(config))

    assert code == 1 and stdout == ""
    [line] = stderr.splitlines()
    assert line.startswith(f"retrieval server {retriever.search_url} failed a test search: ")
    assert "401" in line and "RETRIEVAL_API_KEY" in line
    assert "not-the-token-at-all" not in line and TOKEN not in line
    assert missing[0] == 1 and "401" in missing[2] and len(missing[2].splitlines()) == 1


async def test_the_right_token_passes_with_one_line(tmp_path):
    async with FakeRetriever({preflight.PROBE_QUERY: []}, api_key=TOKEN) as retriever:
        config = config_file(tmp_path, retriever.search_url)
        code, stdout, stderr = await run_preflight("--config", str(config), env={"RETRIEVAL_API_KEY": TOKEN})
        # The test search carried the token and the configured topk, as a rollout's would.
        assert retriever.requests == [{"queries": [preflight.PROBE_QUERY], "topk": 3, "return_scores": True}]

    assert (code, stderr) == (0, "")
    assert stdout.splitlines() == [
        f"search backend ready: 1 retrieval server(s) answered a test search with the access token ({retriever.search_url})"
    ]
    assert TOKEN not in stdout


@pytest.mark.parametrize("section", ["search-r1", "searchr1", "Search_R1", "SEARCH-R1", "search_rl"])
async def test_a_near_miss_of_the_search_r1_key_is_refused_naming_it(tmp_path, section):
    config = config_file(tmp_path, "http://127.0.0.1:9/retrieve", section)
    code, stdout, stderr = await run_preflight("--config", str(config))
    assert code == 1 and stdout == ""
    assert stderr.splitlines() == [
        f"top-level key {section!r} is not read by the plugin: name it search_r1 (lower case, underscore)"
    ]


async def test_a_missing_config_file_is_one_line(tmp_path):
    code, _, stderr = await run_preflight("--config", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert stderr.splitlines() == [f"cannot read the search configuration: --config {tmp_path / 'nope.yaml'}: no such file"]


async def test_invalid_yaml_is_one_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("search_r1: [\n")
    code, _, stderr = await run_preflight("--config", str(config))
    assert code == 1
    [line] = stderr.splitlines()
    assert line.startswith(f"cannot read the search configuration: {config} is not valid YAML: while parsing")


@pytest.mark.parametrize("timeout, reason", [
    ("0", "must be above 0, got 0"), ("-1", "must be above 0, got -1"), ("nan", "must be above 0, got nan"),
    ("soon", "expected a number of seconds, got 'soon'"),
])
async def test_a_timeout_that_is_not_a_positive_number_is_refused(timeout, reason):
    code, _, stderr = await run_preflight("--timeout", timeout)
    assert code == 2
    assert stderr.splitlines() == [f"search-r1-preflight: error: argument --timeout: {reason} (see --help)"]


@pytest.mark.parametrize("status", [422, 500])
async def test_a_server_that_fails_the_test_search_is_one_line(tmp_path, status):
    async with FakeRetriever({preflight.PROBE_QUERY: []}) as retriever:
        retriever.failures.append(status)
        code, stdout, stderr = await run_preflight("--config", str(config_file(tmp_path, retriever.search_url)))
    assert code == 1 and stdout == ""
    [line] = stderr.splitlines()
    assert line.startswith(f"retrieval server {retriever.search_url} failed a test search: ")
    assert f"HTTP {status}" in line


async def test_a_yaml_that_turns_wandb_on_itself_has_its_key_refused_without_the_flag(tmp_path):
    # slime sets every top-level key of the file on its args: use_wandb there turns W&B on as
    # --use-wandb does, and slime uploads args, the key included, before the plugin ever runs.
    config = tmp_path / "search.yaml"
    config.write_text(f"use_wandb: true\nsearch_r1:\n  local:\n    search_url: http://127.0.0.1:9/retrieve\n    api_key: {TOKEN}\n")
    code, stdout, stderr = await run_preflight("--config", str(config))
    assert code == 1 and stdout == ""
    [line] = stderr.splitlines()
    assert line.startswith("search_r1.local.api_key is written in the --custom-config-path YAML while W&B is on")
    assert TOKEN not in stderr

    # W&B off in the YAML: the key is allowed, and the check goes on to the (absent) server.
    config.write_text(config.read_text().replace("use_wandb: true", "use_wandb: false"))
    code, _, stderr = await run_preflight("--config", str(config))
    assert code == 1
    assert stderr.startswith("retrieval server http://127.0.0.1:9/health is not answering")


async def test_the_google_line_says_what_was_and_was_not_checked(tmp_path):
    from tests.fakes.serper import FakeSerper

    async with FakeSerper({}, api_key="serper-key-0123456789") as serper:
        config = tmp_path / "search.yaml"
        config.write_text(f"search_r1:\n  search_backend: google\n  google:\n    endpoint: {serper.endpoint}\n")
        code, stdout, stderr = await run_preflight("--config", str(config), env={"SERPER_API_KEY": "serper-key-0123456789"})
        assert serper.requests == []  # a search costs a credit: none is made
    assert (code, stderr) == (0, "")
    assert stdout.splitlines() == [
        "search backend google: a serper.dev key is set; not checked: the key itself and serper.dev's answer "
        "(no request was made, as a search costs a credit)"
    ]


def test_the_page_tool_without_its_extractor_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # as if not installed: importing it fails
    overrides = {"search_backend": "google", "google": {"api_key": "serper-key-0123456789"}, "access": {"enabled": True}}
    (problem,) = preflight.search_problems(overrides)
    assert problem.startswith("search_r1.access.enabled needs trafilatura (")
    assert problem.endswith("): pip install 'search-r1-slime[deep_research]'")
    monkeypatch.delitem(sys.modules, "trafilatura")
    assert preflight.search_problems(overrides) == []


async def test_with_the_judge_reward_the_judge_must_judge_a_test_answer_right(tmp_path):
    from tests.fakes.chat_judge import FakeJudge
    from tests.fakes.loopback import closed_port

    async with FakeRetriever({preflight.PROBE_QUERY: []}) as retriever, FakeJudge() as judge:
        config = tmp_path / "search.yaml"
        judged = {"reward": "judge", "judge": {"url": judge.endpoint, "timeout": 2.0}}
        config.write_text(f"search_r1:\n  local:\n    search_url: {retriever.search_url}\n  reward: judge\n  judge: {judged['judge']}\n")
        code, stdout, stderr = await run_preflight("--config", str(config))
        assert (code, stderr) == (0, "") and judge.items(0) == [("What is the capital of France?", ["Paris"], "Paris")]
        assert stdout.splitlines()[-1] == f"LLM judge ready: {judge.endpoint} judged a test answer right"

        down = f"http://127.0.0.1:{closed_port()}/v1/chat/completions"
        config.write_text(config.read_text().replace(judge.endpoint, down))
        code, stdout, stderr = await run_preflight("--config", str(config))
    assert code == 1 and stdout == ""
    # The retries are logged as they happen; the problem is the one line at the end.
    assert stderr.splitlines()[-1].startswith(f"the judge at {down} gave no verdict: judge to {down} failed after ")
    assert sum(line.startswith("the judge at") for line in stderr.splitlines()) == 1
