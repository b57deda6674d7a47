"""What installing this project puts on a user's machine, and which way the dependencies point."""

from __future__ import annotations

import ast
import importlib
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import tomllib

REPO = Path(__file__).resolve().parent.parent
# The names slime's example and Search-R1 users know; nothing else of ours is a top-level module.
UPSTREAM_MODULES = {"generate_with_search", "qa_em", "local_search_server", "google_search_server"}
PLUGIN_MODULES = UPSTREAM_MODULES | {"search_r1_slime"}


def imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_upstream_names_and_our_packages_are_installed_at_the_top_level():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools["py-modules"]) == UPSTREAM_MODULES
    assert set(setuptools["packages"]) == {"local_dense_retriever", "search_r1_slime"}
    top_level_files = {p.stem for p in REPO.glob("*.py")}
    assert top_level_files == UPSTREAM_MODULES, "a new top-level module would not be installed (or be generic)"


def test_console_scripts_point_at_callables():
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.value.startswith("search_r1_slime.")}
    assert set(scripts) == {"search-r1-prepare-data", "search-r1-evaluate", "search-r1-preflight", "search-r1-demo"}
    for ep in scripts.values():
        assert callable(ep.load())


def test_the_server_package_imports_nothing_of_the_plugin():
    for path in sorted((REPO / "local_dense_retriever").rglob("*.py")):
        assert not imported_top_level_names(path) & PLUGIN_MODULES, path


def test_benchmarks_do_not_import_the_tests():
    for path in sorted((REPO / "bench").rglob("*.py")):
        assert "tests" not in imported_top_level_names(path), path


@pytest.mark.parametrize("script", sorted(p.stem for p in (REPO / "bench").glob("*.py")))
def test_every_benchmark_imports_as_run_from_the_repository_root(script):
    # `python -m bench.<script>` from the root, as their docstrings say; their own imports must resolve.
    importlib.import_module(f"bench.{script}")


@pytest.mark.parametrize("script", sorted(p.stem for p in (REPO / "bench").glob("*.py")))
def test_every_benchmark_states_its_target_and_prints_pass_or_fail(script):
    module = importlib.import_module(f"bench.{script}")
    if not hasattr(module, "main"):
        return  # a helper of the benchmarks (bench/realtext.py), not one
    assert "target" in module.__doc__.lower(), f"bench/{script}.py: its docstring does not say what it must reach"
    assert re.search(r"""["']PASS["'] if""", (REPO / "bench" / f"{script}.py").read_text()), f"bench/{script}.py prints no PASS/FAIL"
