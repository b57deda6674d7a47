"""Is the search backend the rollouts will use ready? Checked before hours of GPU time are spent.

``run_qwen2.5_3B.sh`` runs ``python3 -m search_r1_slime.preflight [--config FILE.yaml] [--use-wandb]`` (also installed
as ``search-r1-preflight``) and the evaluation
calls ``search_problems()``. Both see the settings the plugin will use, resolved by the plugin's
own ``resolve_config``: ``SEARCH_R1_CONFIGS`` with the YAML's ``search_r1:`` mapping (slime's
``--custom-config-path`` file) on top, so a typo in a key (or in ``search_r1`` itself) is reported
here, before launch. For the local backend every retrieval server must answer ``GET /health`` and
then one test search sent by the plugin's own client with the plugin's settings, so a missing or
wrong access token (401), a ``topk`` the server refuses or an answer in the wrong format shows up
here rather than as failed searches in every rollout. For Google a serper.dev key must be
configured (the key itself is never printed; it is not tried, as a search costs a credit).
With ``search_r1.reward: judge`` the LLM judge must then judge one test answer right
(``judge_problem``, which ``search-r1-evaluate --judge-url`` runs too).
The command prints one line per problem and exits 1, or one line saying what it checked.

It is also the only guard against a key written in the YAML reaching W&B: slime's ``train.py``
uploads its ``args`` (the YAML's keys among them) as the W&B run's config right after allocating
the GPUs, before it creates the rollout manager that loads the plugin, so no code of the plugin
runs before that upload (docs/configuration.md, "Keys and W&B"). W&B is on when the command line
says ``--use-wandb`` or the YAML itself sets ``use_wandb`` (slime sets every top-level key of the
file on its ``args``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from local_dense_retriever.cli import ArgumentParser, check_file
from search_r1_slime.settings import (
    RETRIEVAL_API_KEY_ENV, SECTION, SERPER_API_KEY_ENV, ConfigError, check_section_name, resolve_secret,
)

# What the test search asks: any query does; this one says where it came from in a server's log.
PROBE_QUERY = "search-r1 preflight test search"


def load_search_overrides(config_path: str | Path | None) -> Any:
    """The ``search_r1:`` mapping of a slime ``--custom-config-path`` YAML ({} when absent).

    Raises ``OSError`` for a file that cannot be read, ``ValueError`` for one that is not a YAML
    mapping and ``ConfigError`` for a near miss of the ``search_r1`` key.
    """
    return load_custom_config(config_path).get(SECTION) or {}  # resolve_config says what is wrong with its contents


def load_custom_config(config_path: str | Path | None) -> dict[str, Any]:
    """The whole ``--custom-config-path`` YAML, every top-level key of which slime sets on its
    ``args`` ({} without a file); raises as ``load_search_overrides``."""
    if config_path is None:
        return {}
    check_file("--config", config_path)
    import yaml  # slime's own dependency; only needed when a config file is given

    with open(config_path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            # yaml's message spans lines; the launch script shows each line as a problem of its own.
            raise ValueError(f"{config_path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{config_path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    check_section_name(data)
    return data


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
            f"retrieval server {url} is not answering ({reason}); start it first "
            "(docs/retrieval-server.md) or point search_r1.local.search_url in your --custom-config-path YAML at a running one"
        )


async def _search_problems(urls: list[str], config: dict[str, Any], timeout_s: float) -> list[str]:
    """One test search per server through the rollouts' own client and settings (token, topk,
    proxy), without its cache and retries."""
    from local_search_server import local_search
    from search_r1_slime import http_client
    from search_r1_slime.http_client import RequestFailed, close_shared_session

    problems = []
    # A failed test search becomes one problem line; the client's own retry warnings would only
    # say the same thing again, and the launch script shows every line as a problem.
    client_log = logging.getLogger(http_client.__name__)
    level = client_log.level
    client_log.setLevel(logging.ERROR)
    try:
        for url in urls:
            local = {**config["local"], "search_url": url, "cache": False, "max_attempts": 1}
            try:
                await local_search(query=PROBE_QUERY, top_k=config["topk"], timeout=timeout_s, **local)
            except (RequestFailed, ConfigError) as exc:
                problems.append(f"retrieval server {url} failed a test search: {exc}")
    finally:
        client_log.setLevel(level)
        await close_shared_session()
    return problems


def search_problems(overrides: Any, timeout_s: float = 5.0, use_wandb: bool = False, check_servers: bool = True) -> list[str]:
    """What stands between the plugin and a working search backend; [] when nothing does.

    ``use_wandb``: slime will upload its args to W&B, so no key may be written in ``overrides``.
    ``check_servers=False``: the configuration only (the retrieval servers are not up yet).
    """
    from generate_with_search import resolve_config

    try:
        config = resolve_config(SimpleNamespace(search_r1=overrides, use_wandb=use_wandb))
    except ConfigError as exc:
        return exc.problems
    if config["access"]["enabled"]:
        from search_r1_slime.page_tool import require_extractor

        try:
            require_extractor()
        except ImportError as exc:
            return [str(exc)]
    if config["search_backend"] == "google":
        if resolve_secret(config["google"]["api_key"], config["google"]["api_key_file"], SERPER_API_KEY_ENV) is not None:
            return []
        return [
            "search_backend is 'google' but no serper.dev key is set: export SERPER_API_KEY=... "
            "(or set search_r1.google.api_key_file, a file holding the key, in your --custom-config-path YAML)"
        ]
    if not check_servers:
        return []
    urls = _search_urls(config)
    problems = [problem for url in urls if (problem := _health_problem(url, timeout_s)) is not None]
    return problems or asyncio.run(_search_problems(urls, config, timeout_s))


def judge_problem(settings: dict[str, Any]) -> str | None:
    """One question the judge must get right, asked before the first trajectory; None when it does."""
    from search_r1_slime.http_client import close_shared_session
    from search_r1_slime.judge import judge_answer

    async def ask():
        try:
            return await judge_answer("What is the capital of France?", ["Paris"], "Paris", settings)
        finally:
            await close_shared_session()

    verdict = asyncio.run(ask())
    if verdict.correct is None:
        return f"the judge at {settings['url']} gave no verdict: {' '.join(verdict.reason.split())}"
    if not verdict.correct:
        return f"the judge at {settings['url']} judged 'Paris' wrong for the capital of France: check its model and prompt"
    return None


def _search_urls(config: dict[str, Any]) -> list[str]:
    urls = config["local"]["search_url"]
    return [urls] if isinstance(urls, str) else urls


def ready_line(overrides: Any) -> str:
    """What the preflight prints when ``search_problems(overrides)`` found nothing."""
    from generate_with_search import resolve_config

    config = resolve_config(SimpleNamespace(search_r1=overrides))
    if config["search_backend"] == "google":
        # Only that a key is configured: a test search would cost a serper.dev credit.
        return (
            "search backend google: a serper.dev key is set; not checked: the key itself and serper.dev's answer "
            "(no request was made, as a search costs a credit)"
        )
    urls = _search_urls(config)
    token = resolve_secret(config["local"]["api_key"], config["local"]["api_key_file"], RETRIEVAL_API_KEY_ENV)
    token = "with the access token" if token else "without an access token"
    return f"search backend ready: {len(urls)} retrieval server(s) answered a test search {token} ({', '.join(urls)})"


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 < number < float("inf"):  # NaN and infinity too
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="search-r1-preflight", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", help="slime --custom-config-path YAML with a search_r1: mapping (default: the plugin's defaults)"
    )
    parser.add_argument(
        "--timeout", type=_positive, default=5.0,
        help="seconds to wait for each /health and each test search",
    )
    parser.add_argument(
        "--config-only", action="store_true",
        help="check the configuration but not the retrieval servers (they start later: RETRIEVER=serve bash run_qwen2.5_3B.sh)",
    )
    parser.add_argument(
        "--use-wandb", action="store_true", help="the run logs to W&B (slime's --use-wandb; use_wandb in the YAML counts too): refuse keys written in the YAML"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    judge = None
    try:
        custom_config = load_custom_config(args.config)
        overrides = custom_config.get(SECTION) or {}
        use_wandb = args.use_wandb or bool(custom_config.get("use_wandb"))
        problems = search_problems(overrides, args.timeout, use_wandb, check_servers=not args.config_only)
        judge = _judge_settings(overrides) if not problems else None
        problems += [p for p in [judge and judge_problem(judge)] if p]
    except ConfigError as exc:
        problems = exc.problems
    except (OSError, ValueError, ImportError) as exc:
        problems = [f"cannot read the search configuration: {exc}"]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print("search configuration valid; the retrieval servers are not checked" if args.config_only else ready_line(overrides))
    if judge:
        print(f"LLM judge ready: {judge['url']} judged a test answer right")
    return 0


def _judge_settings(overrides: Any) -> dict[str, Any] | None:
    """The judge's settings when the reward asks a judge (search_r1.reward: judge), else None."""
    from generate_with_search import resolve_config

    config = resolve_config(SimpleNamespace(search_r1=overrides))
    return config["judge"] if config["reward"] == "judge" else None


if __name__ == "__main__":
    sys.exit(main())
