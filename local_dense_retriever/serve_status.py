"""One line on the Serve applications of a Ray cluster, read from ``serve status``, for the launch
script's wait (``RETRIEVER=serve bash run_qwen2.5_3B.sh``):

    serve status --address http://127.0.0.1:8265 | python -m local_dense_retriever.serve_status

prints ``RUNNING <applications>`` when every application runs, ``FAILED <why>`` when one failed to
deploy or became unhealthy, ``WAITING <what>`` while one is still deploying, ``NONE`` when the
cluster has none.

Why a failure happened is in the failed *deployment's* message, not the application's (which only
says "Failed to update the deployments ['Retriever']."), and that message is Serve's headline
followed by the whole traceback of the replica's constructor, some 3 KB. The line keeps the
headline and the traceback's last line, the exception the replica raised (for a missing index:
``FileNotFoundError: index ... does not exist; pass a FAISS index file``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

FAILED = ("DEPLOY_FAILED", "UNHEALTHY")
# The most characters of one reason: enough for a headline and an exception with its path.
MAX_REASON_CHARS = 1000


def reason(message: Any) -> str:
    """A Serve status message on one line: its first line and, if it has more, its last."""
    lines = [" ".join(line.split()) for line in str(message or "").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    kept = lines[0] if len(lines) == 1 else f"{lines[0]} [...] {lines[-1]}"
    return kept if len(kept) <= MAX_REASON_CHARS else kept[: MAX_REASON_CHARS - 3] + "..."


def summary(status: dict[str, Any] | None) -> str:
    """The line for ``status``, the mapping ``serve status`` prints."""
    applications = (status or {}).get("applications") or {}
    if not applications:
        return "NONE"
    failed, waiting = [], []
    for name, app in applications.items():
        state = app.get("status")
        if state in FAILED:
            deployments = [f"{deployment}: {reason(details.get('message'))}"
                           for deployment, details in (app.get("deployments") or {}).items()
                           if details.get("status") in FAILED]
            # Without a failed deployment (an application whose builder raised) the reason is the app's.
            failed.append(f"{name}: {state}: " + ("; ".join(deployments) or reason(app.get("message"))))
        elif state != "RUNNING":
            waiting.append(f"{name} {state}")
    if failed:
        return "FAILED " + "; ".join(failed)
    if waiting:
        return "WAITING " + ", ".join(waiting)
    return "RUNNING " + ", ".join(applications)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_dense_retriever.serve_status",
                                     description="Read `serve status` on standard input; print one line on its applications.")
    parser.parse_args(argv)
    text = sys.stdin.read()
    try:
        status = yaml.safe_load(text)
    except yaml.YAMLError:
        status = None
    # `serve status` always prints its status's fields, "applications" among them (possibly empty).
    if text.strip() and not (isinstance(status, dict) and "applications" in status):
        print(f"serve status printed no status: {reason(text)!r}", file=sys.stderr)
        return 1
    print(summary(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
