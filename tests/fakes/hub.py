"""A machine without Hugging Face hub access, for the commands that download from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fakes.loopback import closed_port


def run_without_hub(module: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    """``python -m module args`` with a hub that refuses connections and an empty cache in ``home``."""
    env = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=120)
