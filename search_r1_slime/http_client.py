"""The HTTP plumbing every outbound call of the plugin shares.

* ``PerLoop``: one object per running event loop. slime keeps one long-lived loop while scripts
  and tests make a loop each, and asyncio objects (sessions, futures, locks) must never cross
  loops; every per-loop registry of the plugin is one of these. What holds resources is closed
  when its loop shuts down.
* ``shared_session()``: one aiohttp session per event loop. slime runs all rollouts of a step in
  one loop, so hundreds of trajectories reuse one connection pool instead of opening a session
  (and a TCP handshake) per search, as upstream did. It is closed when its loop shuts down.
* ``request_json()``: the one retry loop. It retries only what a retry can fix (by default
  connection errors, timeouts, 429 and 5xx) with capped, jittered exponential backoff, honours
  ``Retry-After``, and is bounded by the policy's deadline (an attempt count is optional). Given
  several servers it fails over between them. With ``shared_health=True`` the callers of one loop
  share what they learn about a server: once it fails, they wait while one of them probes it, so a
  server that is down or restarting sees one request per backoff step, not one per waiting search.
  Anything that cannot succeed fails with ``RequestFailed``, whose message says what went wrong.
  Messages quote response bodies but never request headers, and the strings passed as ``redact``
  (API keys, tokens) are scrubbed from every text a message shows, even an echoing server's body:
  ``scrub`` runs on a whole text before it is cut into an excerpt, so no escaped copy or prefix of
  a secret survives. The data returned is parsed from the body as it came: scrubbing it would
  change it (a key that is also a word, a number or a JSON name would be replaced in every answer),
  and keys too short to be secrets are refused by the settings (``settings.MIN_KEY_CHARS``).
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import itertools
import json
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from search_r1_slime.public_web import PublicOnlyResolver

logger = logging.getLogger(__name__)

T = TypeVar("T")
_REQUEST_IDS = itertools.count(1)
_BODY_EXCERPT_CHARS = 200


class PerLoop(Generic[T]):
    """One ``factory()`` object per running event loop, dropped with its loop.

    ``close``: what ends an object's resources (sessions, threads). It is awaited on the loop's
    object when the loop shuts down, as ``asyncio.run`` does at its end (through
    ``loop.shutdown_asyncgens()``, like ``asyncio.Runner``): a loop that ends, such as the one
    slime's fully async worker runs in its thread, leaves no open connection or thread behind (a
    loop closed by hand without ``shutdown_asyncgens`` still does). An object taken out with ``pop``
    is the caller's to close.
    """

    def __init__(self, factory: Callable[[], T], close: Callable[[T], Awaitable[None]] | None = None):
        self._factory = factory
        self._close = close
        # loop -> (its object, the async generator whose finalisation at the loop's shutdown closes it)
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[T, Any]] = weakref.WeakKeyDictionary()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        entry = self._items.get(loop)
        if entry is None:
            item = self._factory()
            closer = None if self._close is None else _started(self._close_at_shutdown(loop, item, self._close))
            entry = self._items[loop] = (item, closer)
        return entry[0]

    def pop(self) -> T | None:
        """Forget the running loop's object (the next ``get`` makes a new one); return it."""
        entry = self._items.pop(asyncio.get_running_loop(), None)
        return None if entry is None else entry[0]

    async def _close_at_shutdown(
        self, loop: asyncio.AbstractEventLoop, item: T, close: Callable[[T], Awaitable[None]]
    ) -> AsyncIterator[None]:
        try:
            yield
        finally:
            # Only while it is still the loop's object: one taken out by pop is its taker's.
            entry = self._items.get(loop)
            if entry is not None and entry[0] is item:
                del self._items[loop]
                await close(item)


def _started(generator: AsyncIterator[None]) -> AsyncIterator[None]:
    """``generator`` run up to its first ``yield``, at once. Its first step registers it with the
    running loop, which finalises it (runs its ``finally``) when it shuts down."""
    try:
        generator.asend(None).send(None)
    except StopIteration:
        pass  # it reached the yield
    return generator


def _new_session(public_only: bool) -> aiohttp.ClientSession:
    # limit=0: concurrency is bounded by the callers' semaphores, not by the pool.
    # trust_env=False: proxies are explicit per request (the configs' "proxy" keys).
    resolver = PublicOnlyResolver() if public_only else None
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, resolver=resolver), trust_env=False)


async def _close_sessions(sessions: dict[bool, aiohttp.ClientSession]) -> None:
    for session in sessions.values():
        await session.close()


# Per event loop: public_only -> its session.
_SESSIONS: PerLoop[dict[bool, aiohttp.ClientSession]] = PerLoop(dict, close=_close_sessions)


def shared_session(public_only: bool = False) -> aiohttp.ClientSession:
    """Return the session of the running event loop, creating it on first use.

    ``public_only``: the session for URLs chosen by someone else (web pages), which connects only
    to public addresses (``search_r1_slime.public_web``).
    """
    sessions = _SESSIONS.get()
    session = sessions.get(public_only)
    if session is None or session.closed:
        session = sessions[public_only] = _new_session(public_only)
    return session


async def close_shared_session() -> None:
    """Close the running loop's sessions now (they are closed anyway when the loop shuts down)."""
    await _close_sessions(_SESSIONS.pop() or {})


def proxy_kwargs(proxy: str | None) -> dict[str, Any]:
    """The ``proxy=`` keyword for aiohttp, or nothing (aiohttp rejects ``proxy=None`` in old versions)."""
    return {} if proxy is None else {"proxy": proxy}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard ``request_json`` tries.

    ``deadline_s`` bounds the whole call, waits included; ``max_attempts`` optionally bounds the
    attempts too (None: as many as fit before the deadline). At least one of them must be set.
    Each attempt times out after ``attempt_timeout_s`` (None: only the deadline bounds it).
    ``retry_statuses``: the HTTP statuses worth another attempt (None: 429 and every 5xx).
    ``retry_after_send``: whether a failure after the request may have reached the server
    (a timeout, a dropped connection) is retried; a refused connection always is.
    """

    max_attempts: int | None = None
    deadline_s: float | None = 30.0
    attempt_timeout_s: float | None = 10.0
    backoff_base_s: float = 0.25
    backoff_max_s: float = 2.0
    retry_statuses: frozenset[int] | None = None
    retry_after_send: bool = True

    def __post_init__(self) -> None:
        # Internal invariants of the building block (callers build policies in code too); user
        # settings are checked by the plugin's configuration schema before they get here.
        if self.max_attempts is None and self.deadline_s is None:
            raise ValueError("a RetryPolicy needs max_attempts or deadline_s: without either it would retry forever")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("deadline_s", "attempt_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")

    def backoff_s(self, failures: int) -> float:
        """Full jitter: uniform up to base * 2^(failures-1), capped at ``backoff_max_s``."""
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** min(failures - 1, 30)))

    def retries_status(self, status: int) -> bool:
        return status == 429 or status >= 500 if self.retry_statuses is None else status in self.retry_statuses


class RequestFailed(Exception):
    """A request that failed for good. ``status`` is the last HTTP status, if any came back;
    ``answer``: the JSON body of a refusal (4xx) that had one, for the caller to read (it is data,
    not scrubbed: never to be shown)."""

    def __init__(self, message: str, status: int | None = None, answer: Any = None):
        super().__init__(message)
        self.status = status
        self.answer = answer


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for, in either of its forms (RFC 9110, 10.2.3):
    delta-seconds or an HTTP-date; None when absent or unreadable (our own backoff applies)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT; a zone-less one is read as such
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def scrub(text: str, secrets: Collection[str]) -> str:
    """``text`` with every secret replaced by ``<redacted>``, as written and as a JSON string
    would carry it (a server echoing a header in a JSON error escapes its quotes and backslashes).
    Call it on outside text that is shown, before anything cuts it."""
    for secret in secrets:
        if secret and secret.strip():  # a blank "secret" would put <redacted> between every two words
            for form in dict.fromkeys((secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1])):
                text = text.replace(form, "<redacted>")
    return text


class _Circuit:
    """What the callers of one loop know about one server.

    Up: everyone sends. Down (after a failure a retry may fix): nobody sends until ``retry_at``;
    then one caller sends a probe while the others wait for its outcome. A success brings everyone
    back at once; a failure starts a longer wait (the backoff grows with ``failures``).
    """

    def __init__(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.server_said = False  # retry_at is the server's Retry-After, not our own guess
        self.probing = False
        self.last_error: _Retryable | None = None

    @property
    def down(self) -> bool:
        return self.failures > 0

    def next_try(self, now: float, left: float | None, last_try: bool) -> float:
        """Seconds until a caller with ``left`` seconds to go may probe (<= 0: now).

        Our backoff is a guess, so a caller whose deadline comes first still gets one last try
        (``last_try``: not taken yet) just before it; a server's Retry-After is its word, and is
        waited out or not at all.
        """
        wait = self.retry_at - now
        if left is None or self.server_said or not last_try:
            return wait
        return min(wait, left - _LAST_TRY_S)


# A caller's last try starts this long before its deadline (an attempt then has this long).
_LAST_TRY_S = 0.5
# Less time than this left: no attempt is worth starting.
_MIN_ATTEMPT_S = 0.05


class _Health:
    """The circuits of a set of servers, and one event that wakes their waiters on any news."""

    def __init__(self) -> None:
        self._circuits: dict[str, _Circuit] = {}
        self._news = asyncio.Event()

    def circuit(self, url: str) -> _Circuit:
        return self._circuits.setdefault(url, _Circuit())

    async def turn(self, urls: Sequence[str], deadline: float | None, last_try: bool) -> tuple[str, bool] | None:
        """Wait until a server may be sent to; return it and whether the request is its probe.

        A down server whose probe is due comes first (so a restarted server is picked up even
        while others answer), then the first server that is up. None: the deadline came, or every
        server asked to be left alone until after it (Retry-After).
        """
        while True:
            now = time.monotonic()
            left = None if deadline is None else deadline - now
            if left is not None and left < _MIN_ATTEMPT_S:
                return None
            idle = [url for url in urls if self.circuit(url).down and not self.circuit(url).probing]
            for url in idle:
                if self.circuit(url).next_try(now, left, last_try) <= 0:
                    self.circuit(url).probing = True
                    return url, True
            for url in urls:
                if not self.circuit(url).down:
                    return url, False
            # None: every server is being probed; wait for news.
            wait = min((self.circuit(url).next_try(now, left, last_try) for url in idle), default=None)
            if left is not None and wait is not None and wait >= left:
                return None
            news = self._news
            timeouts = [t for t in (wait, left) if t is not None]
            try:
                await asyncio.wait_for(news.wait(), timeout=min(timeouts) if timeouts else None)
            except asyncio.TimeoutError:
                pass

    def release(self, url: str) -> None:
        """A probe ended without an outcome (cancelled): let another caller probe."""
        self.circuit(url).probing = False
        self._tell()

    def record(self, url: str, probe: bool, error: _Retryable | None, policy: RetryPolicy) -> None:
        """The outcome of one attempt to ``url`` (``error`` None: the server answered)."""
        circuit = self.circuit(url)
        if probe:
            circuit.probing = False
        if error is None:
            circuit.failures = 0
        else:
            circuit.last_error = error
            # A request sent while the server was up only tells what the first one told: the
            # server is down. Only the first failure and the probes move the schedule on.
            if probe or not circuit.down:
                circuit.failures += 1
                circuit.server_said = error.retry_after_s is not None
                wait = error.retry_after_s if circuit.server_said else policy.backoff_s(circuit.failures)
                circuit.retry_at = time.monotonic() + wait
        self._tell()

    def _tell(self) -> None:
        self._news.set()
        self._news = asyncio.Event()


_SHARED_HEALTH: PerLoop[_Health] = PerLoop(_Health)


async def _attempt(
    method: str, url: str, timeout_s: float | None, policy: RetryPolicy, redact: Collection[str], kwargs: dict[str, Any]
) -> Any:
    session = shared_session()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.request(method, url, timeout=timeout, **kwargs) as resp:
            body = await resp.text(errors="replace")
            if resp.status >= 400:
                message = f"HTTP {resp.status}: {excerpt(body, redact)}"
                if policy.retries_status(resp.status):
                    retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
                    raise _Retryable(message, status=resp.status, retry_after_s=retry_after)
                raise RequestFailed(message, status=resp.status, answer=_json_or_none(body))
    except aiohttp.ClientConnectorError as exc:  # nothing was sent: always safe to retry
        raise _Retryable(f"{type(exc).__name__}: {scrub(str(exc), redact)}") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
        message = f"{type(exc).__name__}: {scrub(str(exc), redact)}" if str(exc) else type(exc).__name__
        if not policy.retry_after_send:
            raise RequestFailed(message) from exc
        raise _Retryable(message) from exc
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestFailed(f"response is not JSON ({exc}): {excerpt(body, redact)}", status=resp.status) from exc


def one_line(text: object) -> str:
    """``text`` (an exception, a stored reason) on one line, for a message that must stay one line."""
    return " ".join(str(text).split())


def excerpt(text: str, redact: Collection[str] = ()) -> str:
    """The start of an outside text (a response body), quoted, for a message: scrubbed whole, then cut."""
    return repr(scrub(text, redact)[:_BODY_EXCERPT_CHARS])


def _json_or_none(body: str) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


async def request_json(
    method: str,
    url: str | Sequence[str],
    *,
    policy: RetryPolicy = RetryPolicy(),
    what: str = "request",
    redact: Collection[str] = (),
    shared_health: bool = False,
    on_attempt: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Any:
    """Send one HTTP request with retries and return the decoded JSON body.

    ``url``: one URL, or several servers in order of preference (each attempt goes to the first
    that is up; a failed one waits out its backoff while the others answer). ``kwargs`` go to
    ``aiohttp.ClientSession.request`` (``json=``, ``headers=``, ``proxy=``...). ``what`` names the
    call in log lines and errors, e.g. ``"retrieve"``; the strings in ``redact`` are scrubbed from both.
    ``shared_health``: share the servers' up/down state with the loop's other calls (see the
    module docstring). ``on_attempt(url)`` is called for every request sent.
    Raises ``RequestFailed`` when the request cannot succeed within the policy.
    """
    urls = [url] if isinstance(url, str) else list(url)
    health = _SHARED_HEALTH.get() if shared_health else _Health()
    request_id = next(_REQUEST_IDS)
    started = time.monotonic()
    deadline = None if policy.deadline_s is None else started + policy.deadline_s
    attempts = 0
    last: _Retryable | None = None
    last_try = True  # not taken yet
    while policy.max_attempts is None or attempts < policy.max_attempts:
        turn = await health.turn(urls, deadline, last_try)
        if turn is None:
            break  # no server can be tried before the deadline
        target, probe = turn
        if deadline is not None and deadline - time.monotonic() <= _LAST_TRY_S:
            last_try = False
        timeout_s = policy.attempt_timeout_s
        if deadline is not None:
            # At least a moment: the turn was granted before the deadline, and a probe must report back.
            timeout_s = max(_MIN_ATTEMPT_S, min(timeout_s or float("inf"), deadline - time.monotonic()))
        attempts += 1
        if on_attempt is not None:
            on_attempt(target)
        try:
            body = await _attempt(method, target, timeout_s, policy, redact, kwargs)
        except RequestFailed as exc:
            health.record(target, probe, None, policy)  # the server answered: it is up
            raise RequestFailed(str(exc), status=exc.status, answer=exc.answer) from None
        except _Retryable as exc:
            last = exc
            health.record(target, probe, exc, policy)
            logger.warning("[%s #%d] attempt %d to %s failed (%s); retrying while time is left", what, request_id, attempts, target, exc)
            continue
        except BaseException:
            if probe:  # cancelled mid-probe: the others must not wait for an outcome that never comes
                health.release(target)
            raise
        health.record(target, probe, None, policy)
        return body
    elapsed = time.monotonic() - started
    known = {u: health.circuit(u).last_error for u in urls if health.circuit(u).last_error is not None}
    if last is None and known:  # nothing sent: the servers were down the whole time
        last = next(iter(known.values()))
    if len(urls) == 1:
        where, reasons = urls[0], str(last) if last is not None else "no attempt fitted in the deadline"
    else:
        where, reasons = f"{len(urls)} servers", " | ".join(f"{u}: {e}" for u, e in known.items())
    message = f"{what} to {where} failed after {attempts} attempt(s) in {elapsed:.1f}s: {reasons}"
    logger.warning("[%s #%d] %s", what, request_id, message)
    raise RequestFailed(message, status=None if last is None else last.status)
