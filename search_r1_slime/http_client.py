"""The HTTP plumbing every outbound call of the plugin shares.

* ``shared_session()``: one aiohttp session per event loop. slime runs all rollouts of a step in
  one loop, so hundreds of trajectories reuse one connection pool instead of opening a session
  (and a TCP handshake) per search, as upstream did.
* ``request_json()``: the one retry loop. It retries only what a retry can fix (connection
  errors, timeouts, 429 and 5xx), with jittered exponential backoff, honours ``Retry-After``,
  and never runs past the policy's deadline. Anything else fails at once with ``RequestFailed``,
  whose message says what went wrong. Messages quote response bodies but never request headers,
  and the strings passed as ``redact`` (API keys) are scrubbed even from an echoing server's body.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
import weakref
from dataclasses import dataclass
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()
_REQUEST_IDS = itertools.count(1)
_BODY_EXCERPT_CHARS = 200


def shared_session() -> aiohttp.ClientSession:
    """Return the session of the running event loop, creating it on first use."""
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None or session.closed:
        # limit=0: concurrency is bounded by the callers' semaphores, not by the pool.
        # trust_env=False: proxies are explicit per request (the configs' "proxy" keys).
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False)
        _SESSIONS[loop] = session
    return session


async def close_shared_session() -> None:
    """Close the running loop's session (scripts and tests call this before their loop ends)."""
    session = _SESSIONS.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


@dataclass(frozen=True)
class RetryPolicy:
    """How hard ``request_json`` tries.

    ``deadline_s`` bounds the whole call, backoff sleeps included; ``None`` means attempts alone
    bound it (each attempt still times out after ``attempt_timeout_s``, when that is set).
    """

    max_attempts: int = 5
    deadline_s: float | None = 30.0
    attempt_timeout_s: float | None = 10.0
    backoff_base_s: float = 0.25
    backoff_max_s: float = 4.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("deadline_s", "attempt_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")


class RequestFailed(Exception):
    """A request that failed for good. ``status`` is the last HTTP status, if any came back."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def _retry_after_seconds(value: str | None) -> float | None:
    # Only the delta-seconds form; an HTTP-date falls back to our own backoff.
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _scrub(message: str, redact: tuple[str, ...]) -> str:
    for secret in redact:
        if secret:
            message = message.replace(secret, "<redacted>")
    return message


async def _attempt(method: str, url: str, timeout_s: float | None, kwargs: dict[str, Any]) -> Any:
    session = shared_session()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.request(method, url, timeout=timeout, **kwargs) as resp:
            body = await resp.text(errors="replace")
            if resp.status == 429 or resp.status >= 500:
                raise _Retryable(
                    f"HTTP {resp.status}: {body[:_BODY_EXCERPT_CHARS]!r}",
                    status=resp.status,
                    retry_after_s=_retry_after_seconds(resp.headers.get("Retry-After")),
                )
            if resp.status >= 400:
                raise RequestFailed(f"HTTP {resp.status}: {body[:_BODY_EXCERPT_CHARS]!r}", status=resp.status)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestFailed(f"response is not JSON ({exc}): {body[:_BODY_EXCERPT_CHARS]!r}", status=resp.status) from exc


async def request_json(
    method: str,
    url: str,
    *,
    policy: RetryPolicy = RetryPolicy(),
    what: str = "request",
    redact: tuple[str, ...] = (),
    **kwargs: Any,
) -> Any:
    """Send one HTTP request with retries and return the decoded JSON body.

    ``kwargs`` go to ``aiohttp.ClientSession.request`` (``json=``, ``headers=``, ``proxy=``...).
    ``what`` names the call in log lines and errors, e.g. ``"retrieve"``; every string in
    ``redact`` is replaced by ``<redacted>`` in them.
    Raises ``RequestFailed`` when the request cannot succeed within the policy.
    """
    request_id = next(_REQUEST_IDS)
    started = time.monotonic()
    for attempt in range(1, policy.max_attempts + 1):
        remaining = None if policy.deadline_s is None else policy.deadline_s - (time.monotonic() - started)
        timeout_s = policy.attempt_timeout_s
        if remaining is not None:
            timeout_s = remaining if timeout_s is None else min(timeout_s, remaining)
        try:
            return await _attempt(method, url, timeout_s, kwargs)
        except RequestFailed as exc:
            raise RequestFailed(_scrub(str(exc), redact), status=exc.status) from None
        except _Retryable as exc:
            last = exc
        backoff = random.uniform(0, min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1)))
        if last.retry_after_s is not None:
            backoff = last.retry_after_s
        elapsed = time.monotonic() - started
        out_of_time = policy.deadline_s is not None and elapsed + backoff >= policy.deadline_s
        if attempt == policy.max_attempts or out_of_time:
            break
        logger.warning(
            "[%s #%d] attempt %d/%d to %s failed (%s); retrying in %.2fs",
            what, request_id, attempt, policy.max_attempts, url, _scrub(str(last), redact), backoff,
        )
        await asyncio.sleep(backoff)
    elapsed = time.monotonic() - started
    message = _scrub(f"{what} to {url} failed after {attempt} attempt(s) in {elapsed:.1f}s: {last}", redact)
    logger.warning("[%s #%d] %s", what, request_id, message)
    raise RequestFailed(message, status=last.status)
