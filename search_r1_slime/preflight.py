"""Is the search backend the rollouts will use ready? Checked before hours of GPU time are spent.

``run_qwen2.5_3B.sh`` runs ``python3 -m search_r1_slime.preflight [--config FILE.yaml] [--use-wandb]`` (also installed
as ``search-r1-preflight``) and the evaluation
calls ``search_problems()``. Both see the settings the plugin will use, resolved by the plugin's
own ``resolve_config``: ``SEARCH_R1_CONFIGS`` with the YAML's ``search_r1:`` mapping (slime's
``--custom-config-path`` file) on top, so a typo in a key is reported here, before launch. For
the local backend every retrieval server must answer ``GET /health``; for Google a serper.dev key
must be configured (the key itself is never printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def load_search_overrides(config_path: str | Path | None) -> Any:
    """The ``search_r1:`` mapping of a slime ``--custom-config-path`` YAML ({} when absent)."""
    if config_path is None:
        return {}
    import yaml  # slime's own dependency; only needed when a config file is given

    with open(config_path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{config_path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{config_path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return data.get("search_r1") or {}  # resolve_config says what is wrong with its contents


def health_url(search_url: str) -> str:
    """``http://host:8000/retrieve`` -> ``http://host:8000/health``."""
    base = search_url.rstrip("/")
    if base.endswith("/retrieve"):
        base = base[: -len("/retrieve")]
    return base + "/health"


def _health_problem(search_url: str, timeout_s: float) -> str | None:
    url = health_url(search_url)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 405):
            return None  # up, but without /health (upstream's retrieval_server.py has none)
        try:
            status = json.loads(exc.read())
            detail = f": {status.get('status')}" + (f" ({status['error']})" if status.get("error") else "")
        except (ValueError, AttributeError):
            detail = ""
        return (
            f"retrieval server {url} is not ready (HTTP {exc.code}{detail}); wait until it has loaded "
            "the index (it answers 200 then) or read its log"
        )
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return (
            f"retrieval server {url} is not answering ({reason}); start it first (README, 'Retrieval "
            "server') or point search_r1.local.search_url in your --custom-config-path YAML at a running one"
        )


def search_problems(overrides: Any, timeout_s: float = 5.0, use_wandb: bool = False) -> list[str]:
    """What stands between the plugin and a working search backend; [] when nothing does.

    ``use_wandb``: slime will upload its args to W&B, so no key may be written in ``overrides``.
    """
    from generate_with_search import ConfigError, resolve_config

    try:
        config = resolve_config(SimpleNamespace(search_r1=overrides, use_wandb=use_wandb))
    except ConfigError as exc:
        return exc.problems
    if config["search_backend"] == "google":
        from search_r1_slime.settings import SERPER_API_KEY_ENV, resolve_secret

        if resolve_secret(config["google"]["api_key"], config["google"]["api_key_file"], SERPER_API_KEY_ENV) is not None:
            return []
        return [
            "search_backend is 'google' but no serper.dev key is set: export SERPER_API_KEY=... "
            "(or set search_r1.google.api_key_file, a file holding the key, in your --custom-config-path YAML)"
        ]
    urls = config["local"]["search_url"]
    urls = [urls] if isinstance(urls, str) else urls
    return [problem for url in urls if (problem := _health_problem(url, timeout_s)) is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="slime --custom-config-path YAML with a search_r1: mapping")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each /health")
    parser.add_argument("--use-wandb", action="store_true", help="the run logs to W&B (slime's --use-wandb): refuse keys written in the YAML")
    args = parser.parse_args(argv)
    try:
        problems = search_problems(load_search_overrides(args.config), args.timeout, args.use_wandb)
    except (OSError, ValueError, ImportError) as exc:
        problems = [f"cannot read the search configuration: {exc}"]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
