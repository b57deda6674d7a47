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
        code, stdout, stderr = await run_preflight("--config", str(config), env={"RETRIEVAL_API_KEY": "not-the-token"})
        missing = await run_preflight("--config", str(config))

    assert code == 1 and stdout == ""
    [line] = stderr.splitlines()
    assert line.startswith(f"retrieval server {retriever.search_url} failed a test search: ")
    assert "401" in line and "RETRIEVAL_API_KEY" in line
    assert "not-the-token" not in line and TOKEN not in line
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
    assert stderr.splitlines() == [f"cannot read the search configuration: [Errno 2] No such file or directory: '{tmp_path / 'nope.yaml'}'"]


async def test_invalid_yaml_is_one_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("search_r1: [\n")
    code, _, stderr = await run_preflight("--config", str(config))
    assert code == 1
    [line] = stderr.splitlines()
    assert line.startswith(f"cannot read the search configuration: {config} is not valid YAML: while parsing")


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
async def test_a_timeout_that_is_not_a_positive_number_is_refused(timeout):
    code, _, stderr = await run_preflight("--timeout", timeout)
    assert code == 2
    assert "argument --timeout:" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("status", [422, 500])
async def test_a_server_that_fails_the_test_search_is_one_line(tmp_path, status):
    async with FakeRetriever({preflight.PROBE_QUERY: []}) as retriever:
        retriever.failures.append(status)
        code, stdout, stderr = await run_preflight("--config", str(config_file(tmp_path, retriever.search_url)))
    assert code == 1 and stdout == ""
    [line] = stderr.splitlines()
    assert line.startswith(f"retrieval server {retriever.search_url} failed a test search: ")
    assert f"HTTP {status}" in line


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
