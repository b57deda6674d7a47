"""Every command the documentation (README.md and docs/) tells a user to run explains itself:
``--help`` exits 0 with a description, and every option says what it does and, when it has one,
its default."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from local_dense_retriever import download
from search_r1_slime import demo, evaluate, preflight, prepare_data
from tests import documentation

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """``python -m X`` of this repository's modules and the ``search-r1-*`` console scripts,
    wherever the English documentation mentions them."""
    text = documentation.text("en")
    modules = {m for m in re.findall(r"python3? -m ([A-Za-z_][\w.]*)", text) if (REPO / m.split(".")[0]).exists()}
    # The distribution's own name (in paths such as its cache folder) is not a command.
    distribution = re.search(r'^name = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    scripts = set(re.findall(r"\bsearch-r1-[a-z-]+[a-z]\b", text)) - {distribution}
    return sorted(modules) + sorted(scripts)


def test_the_readme_names_every_command_of_ours():
    commands = readme_commands()
    for expected in ("local_dense_retriever.download", "local_dense_retriever.retrieval_server",
                     "local_dense_retriever.index_builder", "search-r1-prepare-data", "search-r1-evaluate",
                     "search-r1-preflight", "search-r1-demo"):
        assert expected in commands


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_answers_help(command):
    if command.startswith("search-r1-"):
        argv = [str(Path(sys.executable).parent / command)]  # the console script pip installed
    else:
        argv = [sys.executable, "-m", command]
    result = subprocess.run([*argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    usage, _, rest = result.stdout.partition("\n\n")
    # The name a user typed, not the module's file name (argparse's default for python -m).
    assert usage.startswith(f"usage: {command if command.startswith('search-r1-') else 'python -m ' + command} ")
    assert rest.strip() and not rest.lstrip().startswith(("options:", "positional arguments:")), "no description"


PARSERS = {
    "search-r1-prepare-data": prepare_data.build_parser,
    "search-r1-evaluate": evaluate.build_parser,
    "search-r1-preflight": preflight.build_parser,
    "search-r1-demo": demo.build_parser,
    "local_dense_retriever.download": download.build_parser,
}


@pytest.mark.parametrize("name", PARSERS)
def test_every_option_says_what_it_does_and_its_default(name):
    parser = PARSERS[name]()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.default is argparse.SUPPRESS:
            continue
        assert action.help, f"{name} {action.option_strings} has no help"
        meaningful_default = action.default is not None and action.default is not False and not action.required
        if meaningful_default:
            shown = parser._get_formatter()._expand_help(action)  # the option's help as --help prints it
            assert f"default: {action.default}" in shown, f"{name} {action.option_strings} does not show its default {action.default!r}"


@pytest.mark.parametrize("name", PARSERS)
def test_a_wrong_flag_is_one_line(name, capsys):
    """argparse's own errors print the whole usage first; ours are the error alone."""
    parser = PARSERS[name]()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--no-such-flag"])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{parser.prog}: error: ") and line.endswith(" (see --help)")
