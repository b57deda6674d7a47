"""The plugin's client of the local retrieval server (a client, despite upstream's module name).

It speaks Search-R1's ``POST /retrieve`` and is built for GRPO load.

A GRPO step fires hundreds of searches at once and the n samples of one prompt often ask the same
thing. Upstream opened a session per search and sent one query per request, so the retriever
served hundreds of tiny requests one by one. Here:

* identical queries in flight go out once, finished answers sit in a bounded LRU
  (``search_cache.SearchCache``, keyed by servers, query and top_k);
* the remaining queries that arrive within ``batch_wait`` seconds of each other travel together
  in one ``/retrieve`` request of up to ``max_batch_size`` queries, and each caller gets exactly
  its own query's documents back;
* ``search_url`` may list several servers: batches are spread over them round robin, and a
  server that fails is skipped (and put last for a while) while the others answer;
* every request goes through ``http_client.request_json`` (shared session, bounded retries);
  ``timeout`` bounds the whole search, and any failure raises ``RequestFailed`` for every caller
  of the batch, never an empty list.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from search_r1_slime.http_client import RequestFailed, RetryPolicy, request_json
from search_r1_slime.search_cache import CacheStats, PerLoop, SearchCache, check_search_args

logger = logging.getLogger(__name__)

# How long a server that just failed is tried only after the others. Long enough to stop paying
# a connection timeout per batch to a dead server, short enough to pick a restarted one up soon.
_SERVER_PENALTY_S = 10.0
_NO_CONTENTS = '"No title."\nNo snippet available.'  # upstream's stand-in for an empty passage


@dataclass(frozen=True)
class _Route:
    """Everything that shapes a ``/retrieve`` request; queries with equal routes share batches."""

    servers: tuple[str, ...]
    top_k: int
    timeout: float
    proxy: str | None
    max_attempts: int
    attempt_timeout: float
    batch_wait: float
    max_batch_size: int


@dataclass
class LocalSearchStats(CacheStats):
    """``CacheStats`` plus what reached the wire: batches sent and HTTP requests made."""

    batches: int = 0
    http_requests: int = 0


@dataclass
class _LoopState:
    cache: SearchCache = field(default_factory=SearchCache)
    batchers: dict[_Route, "_Batcher"] = field(default_factory=dict)
    penalised_until: dict[str, float] = field(default_factory=dict)
    round_robin: itertools.count = field(default_factory=itertools.count)
    batches: int = 0
    http_requests: int = 0

    def servers_in_order(self, servers: tuple[str, ...]) -> list[str]:
        """Round robin over the servers, the ones that failed lately moved to the end."""
        start = next(self.round_robin) % len(servers)
        rotated = servers[start:] + servers[:start]
        now = time.monotonic()
        return sorted(rotated, key=lambda url: self.penalised_until.get(url, 0.0) > now)


_STATE: PerLoop[_LoopState] = PerLoop(_LoopState)


def local_search_stats() -> LocalSearchStats:
    """Counters of the running event loop (for benchmarks and metrics)."""
    state = _STATE.get()
    return LocalSearchStats(**vars(state.cache.stats), batches=state.batches, http_requests=state.http_requests)


async def local_search(
    search_url: str | list[str],
    query: str,
    top_k: int = 5,
    timeout: float = 60,
    proxy: str | None = None,
    *,
    batch_wait: float = 0.01,
    max_batch_size: int = 64,
    cache: bool = True,
    cache_size: int = 10_000,
    max_attempts: int = 5,
    attempt_timeout: float = 10.0,
) -> list[dict]:
    """Search the local retriever; return ``[{"document": {"contents": '"Title"\\ntext'}}, ...]``.

    ``search_url``: one ``/retrieve`` URL or a list of them. ``timeout``: seconds the whole search
    may take, retries and the batching wait included. ``batch_wait``/``max_batch_size``: how long
    a query waits for others to share its request, and how many may share one. ``cache``/
    ``cache_size``: keep finished answers (LRU). ``max_attempts``/``attempt_timeout``: retries
    of one request. Raises ``http_client.RequestFailed`` when no server answers properly in time.
    """
    servers = (search_url,) if isinstance(search_url, str) else tuple(search_url)
    if not servers:
        raise ValueError("search_url is empty: give the URL of your retrieval server, e.g. http://127.0.0.1:8000/retrieve")
    check_search_args(top_k, timeout, cache_size)
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    if not 0 <= batch_wait < timeout:
        raise ValueError(f"batch_wait must be at least 0 and below the search timeout ({timeout}s), got {batch_wait}")
    route = _Route(servers, top_k, timeout, proxy, max_attempts, attempt_timeout, batch_wait, max_batch_size)
    # Fail on a bad policy here, in the caller, rather than inside a batch.
    RetryPolicy(max_attempts=max_attempts, attempt_timeout_s=attempt_timeout)
    state = _STATE.get()
    batcher = state.batchers.get(route)
    if batcher is None:
        batcher = state.batchers[route] = _Batcher(route, state)
    return await state.cache.get_or_run(
        ("local", servers, query, top_k), lambda: batcher.submit(query), use_cache=cache, max_size=cache_size
    )


class _Batcher:
    """Gathers the queries of one route into ``/retrieve`` requests."""

    def __init__(self, route: _Route, state: _LoopState):
        self._route = route
        self._state = state
        self._pending: list[tuple[str, asyncio.Future[list[dict]]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    def submit(self, query: str) -> asyncio.Future[list[dict]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[dict]] = loop.create_future()
        self._pending.append((query, future))
        if len(self._pending) >= self._route.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._route.batch_wait, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[str, asyncio.Future[list[dict]]]]) -> None:
        # Every future of the batch is settled whatever happens, so no caller can hang on it.
        try:
            results = await _retrieve(self._route, [query for query, _ in batch], self._state)
        except BaseException as exc:
            failure = exc if isinstance(exc, RequestFailed) else RequestFailed(f"local search failed: {exc!r}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(RequestFailed(str(failure), status=failure.status))
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), documents in zip(batch, results):
                if not future.done():
                    future.set_result(documents)


async def _retrieve(route: _Route, queries: list[str], state: _LoopState) -> list[list[dict]]:
    """Send one batch, failing over between servers; return one document list per query."""
    state.batches += 1
    # return_scores=True on purpose: upstream's server unpacks a two-query answer without scores
    # as (results, scores) and returns garbage (docs/protocols.md, "The retrieval API"); the scored shape is always right.
    payload = {"queries": queries, "topk": route.top_k, "return_scores": True}
    deadline = time.monotonic() + route.timeout - route.batch_wait
    order = state.servers_in_order(route.servers)
    if len(order) == 1:
        return await _post(order[0], payload, route, deadline, route.max_attempts, state)
    # Several servers: one quick attempt each, so a dead server costs one failure, not a full
    # retry schedule; if all failed, the preferred one gets the retries left until the deadline.
    errors = []
    for url in order:
        try:
            return await _post(url, payload, route, deadline, 1, state)
        except RequestFailed as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                raise  # our request is wrong; every server will say the same
            errors.append(str(exc))
            logger.warning("retrieval server %s failed for a batch of %d queries; trying the next one", url, len(queries))
    if route.max_attempts > 1 and deadline - time.monotonic() > 0:
        try:
            return await _post(order[0], payload, route, deadline, route.max_attempts - 1, state)
        except RequestFailed as exc:
            errors.append(str(exc))
    raise RequestFailed(f"all {len(order)} retrieval servers failed: " + " | ".join(errors))


async def _post(
    url: str, payload: dict, route: _Route, deadline: float, attempts: int, state: _LoopState
) -> list[list[dict]]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RequestFailed(f"retrieve to {url} not tried: the search timeout ({route.timeout}s) ran out")
    policy = RetryPolicy(max_attempts=attempts, deadline_s=remaining, attempt_timeout_s=route.attempt_timeout)
    extra: dict[str, Any] = {} if route.proxy is None else {"proxy": route.proxy}
    state.http_requests += 1
    try:
        body = await request_json("POST", url, json=payload, policy=policy, what="retrieve", **extra)
        results = parse_retrieve_response(body, len(payload["queries"]))
    except RequestFailed:
        state.penalised_until[url] = time.monotonic() + _SERVER_PENALTY_S
        raise
    state.penalised_until.pop(url, None)
    return results


def parse_retrieve_response(body: Any, n_queries: int) -> list[list[dict]]:
    """Turn a ``/retrieve`` answer of either shape into our output format, one list per query.

    Items are documents (``return_scores`` false) or ``{"document": doc, "score": s}`` (true).
    Raises ``RequestFailed`` naming what is wrong when the answer does not have that shape.
    """
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, list):
        raise RequestFailed(f"retrieval server answered without a 'result' list: {str(body)[:200]!r}")
    if len(result) != n_queries:
        raise RequestFailed(f"retrieval server answered {len(result)} result lists for {n_queries} queries")
    parsed = []
    for i, items in enumerate(result):
        if not isinstance(items, list):
            raise RequestFailed(f"retrieval server answered a {type(items).__name__} instead of a list for query {i}")
        documents = []
        for j, item in enumerate(items):
            doc = item.get("document", item) if isinstance(item, dict) else None
            contents = doc.get("contents") if isinstance(doc, dict) else None
            if not isinstance(contents, str):
                raise RequestFailed(f"retrieval server answered item {j} of query {i} without a 'contents' string: {str(item)[:200]!r}")
            documents.append({"document": {"contents": contents or _NO_CONTENTS}})
        parsed.append(documents)
    return parsed
