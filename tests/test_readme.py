"""The READMEs: the English and Chinese versions keep the same outline, and the commands of ours
that cannot run here (they need the Hub, GPUs or a trained model) at least parse as written."""

from __future__ import annotations

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
