"""Real slime for the tests: its source archives, unpacked and imported in this process.

``../shared/slime/`` beside the checkout holds ``git archive`` tarballs of slime's package at the
revisions we support (CI and every developer machine have it; a user's machine does not, and the
tests that need it skip there, or fail under ``CI`` where its absence is a broken setup). Each
archive is unpacked once per test session; ``imported`` then puts one revision on ``sys.path``
with stand-ins for slime's uninstallable imports (tests/fakes/slime_deps.py) and removes every
trace of it afterwards, so tests can run one revision after another in the same process.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.fakes import slime_deps

REPO = Path(__file__).resolve().parent.parent
ARCHIVES = REPO.parent / "shared" / "slime"
# One revision per layout of slime's logging helpers and rollout contract (../shared/slime/README.md).
REVISIONS = ("2026-01-13", "2026-04-30", "2026-08-21")


class SlimeSources:
    """The archives of ``REVISIONS``, each unpacked on first use under ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, revision: str) -> Path:
        """The folder holding slime's ``slime/`` package at ``revision`` (skips without the archive)."""
        target = self.root / revision
        if not (target / "slime").is_dir():
            found = sorted(ARCHIVES.glob(f"slime-{revision}-*.tar.gz"))
            if not found:
                missing(f"no slime archive slime-{revision}-*.tar.gz in {ARCHIVES}")
            with tarfile.open(found[0]) as archive:
                # Each archive holds one top folder (slime-<date>/) with slime/, LICENSE and README.
                archive.extractall(self.root / f"{revision}.unpacked", filter="data")
            (top,) = (self.root / f"{revision}.unpacked").iterdir()
            top.rename(target)
        return target


def missing(reason: str) -> None:
    """Skip where slime's archives are absent by design; fail in CI, where they must be present."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the real-slime tests (../shared/slime/ beside the checkout)")
    pytest.skip(f"{reason} (real-slime tests run where ../shared/slime/ sits beside the checkout)")


def _is_slime(name: str) -> bool:
    return name == "slime" or name.startswith("slime.")


@contextlib.contextmanager
def imported(source: Path) -> Iterator[ModuleType]:
    """Import slime from ``source`` (its ``slime`` package) with the stand-ins in place; on exit,
    drop slime's modules and the stand-ins and restore ``sys.path``."""
    stubs = slime_deps.modules()
    assert not any(_is_slime(name) for name in sys.modules), "another slime is imported already"
    saved = {name: sys.modules[name] for name in stubs if name in sys.modules}
    sys.modules.update(stubs)
    sys.path.insert(0, str(source))
    try:
        yield importlib.import_module("slime")
    finally:
        sys.path.remove(str(source))
        for name in [name for name in sys.modules if _is_slime(name) or name in stubs]:
            del sys.modules[name]
        sys.modules.update(saved)
