""".ci/run: CI runs the README's test command, in a brand-new virtual environment as a newcomer
would, so packages of the machine's own Python cannot make CI greener than a fresh set-up."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_command_in_a_fresh_venv_outside_the_checkout(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci/run", checkout / ".ci/run")
    report = tmp_path / "report.txt"
    # The README's command, as a newcomer copies it: here it only says which Python runs it.
    (checkout / "README.md").write_text(
        "<!-- test-command -->\n```bash\n"
        f"python -c 'import sys; print(sys.prefix, sys.base_prefix, sep=chr(10))' > {report}\n```\n"
    )

    result = subprocess.run(["bash", ".ci/run"], cwd=checkout, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    prefix, base_prefix = report.read_text().splitlines()
    assert prefix != base_prefix  # a virtual environment
    assert prefix != sys.prefix  # not the one running these tests: a new one
    assert not Path(prefix).is_relative_to(checkout)  # where pytest and the editable install cannot see it
    assert not Path(prefix).exists()  # and gone afterwards
    assert result.stdout.splitlines()[-1].startswith("+ python -c")
