"""The plugin's client of the local retrieval server (a client, despite upstream's module name).

It speaks Search-R1's ``POST /retrieve`` and is built for GRPO load and for a retriever that
restarts.

A GRPO step fires hundreds of searches at once and the n samples of one prompt often ask the same
thing. Upstream opened a session per search and sent one query per request, so the retriever
served hundreds of tiny requests one by one. Here:

* identical queries in flight go out once, finished answers sit in a bounded LRU
  (``search_cache.SearchCache``, keyed by servers, query and top_k);
* the remaining queries that arrive within ``batch_wait`` seconds of each other travel together
  in one ``/retrieve`` request of up to ``max_queries_per_request`` queries, and each caller gets
  exactly its own query's documents back;
* one query's problem stays that query's: a blank query is never sent (``RequestFailed`` at once),
  a query longer than ``max_query_chars`` is cut to it, and a request the server refuses as
  invalid (422, or 413 too large) is sent again one query per request, so that only the query the
  server refuses fails;
* ``search_url`` may list several servers: requests are spread over them round robin, and a
  server that fails is skipped while the others answer;
* every request goes through ``http_client.request_json``: retries of what a retry can fix
  (refused or dropped connections, timeouts, 429, 5xx, 503 with ``Retry-After`` while a server
  loads) until the search's deadline, ``timeout`` (config ``search_timeout``). The searches of one
  event loop share what they learn about a server, so while it is down only one request at a time
  probes it and the others wait for the outcome. When the deadline comes first, every caller of
  the request gets ``RequestFailed``, never an empty list;
* with ``api_key`` (or ``api_key_file``, or ``RETRIEVAL_API_KEY`` in the environment) every request
  carries ``Authorization: Bearer <key>``; the key is never logged.
"""

from __future__ import annotations

import functools
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from search_r1_slime.batching import Coalescer
from search_r1_slime.http_client import PerLoop, RequestFailed, RetryPolicy, proxy_kwargs, request_json
from search_r1_slime.search_cache import CacheStats, SearchCache, cache_key, document, refuse_blank
from search_r1_slime.settings import DEFAULTS, RETRIEVAL_API_KEY_ENV, SearchR1Config, resolve_secret

# A request refused with one of these may hold a single query the server will not take; its
# queries are sent again one per request so that the others still get their documents.
_INVALID_REQUEST_STATUSES = (413, 422)


@dataclass(frozen=True)
class _Route:
    """Everything that shapes a ``/retrieve`` request; queries with equal routes share requests."""

    servers: tuple[str, ...]
    top_k: int
    timeout: float
    proxy: str | None
    max_attempts: int | None
    attempt_timeout: float
    batch_wait: float
    max_queries_per_request: int
    api_key: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What no message may show."""
        return () if self.api_key is None else (self.api_key,)


@dataclass
class LocalSearchStats(CacheStats):
    """``CacheStats`` plus what reached the wire: requests formed and HTTP attempts sent."""

    batches: int = 0
    http_requests: int = 0


@dataclass
class _LoopState:
    cache: SearchCache = field(default_factory=SearchCache)
    coalescers: dict[_Route, Coalescer[str, list[dict]]] = field(default_factory=dict)
    round_robin: itertools.count = field(default_factory=itertools.count)
    batches: int = 0
    http_requests: int = 0

    def servers_in_order(self, servers: tuple[str, ...]) -> list[str]:
        """Round robin over the servers (``request_json`` skips the ones that are down)."""
        start = next(self.round_robin) % len(servers)
        return list(servers[start:] + servers[:start])

    def count_attempt(self, url: str) -> None:
        self.http_requests += 1


_STATE: PerLoop[_LoopState] = PerLoop(_LoopState)


def local_search_stats() -> LocalSearchStats:
    """Counters of the running event loop (for benchmarks and metrics)."""
    state = _STATE.get()
    return LocalSearchStats(**vars(state.cache.stats), batches=state.batches, http_requests=state.http_requests)


async def local_search(
    search_url: str | list[str],
    query: str,
    top_k: int = DEFAULTS.topk,
    timeout: float = DEFAULTS.search_timeout,
    proxy: str | None = DEFAULTS.local.proxy,
    **settings: Any,
) -> list[dict]:
    """Search the local retriever; return ``[{"document": {"contents": '"Title"\\ntext'}}, ...]``.

    ``search_url``: one ``/retrieve`` URL or a list of them. ``timeout``: seconds the whole search
    may take, retries and the batching wait included. ``settings``: the other keys of
    ``search_r1.local`` (``search_r1_slime.settings.LocalSettings``: defaults and ranges), checked
    like the configuration (``ConfigError`` names a bad one). Raises ``http_client.RequestFailed``
    when no server answers properly in time, or at once for a blank query.
    """
    config = SearchR1Config.checked(
        {"topk": top_k, "search_timeout": timeout, "local": {"search_url": search_url, "proxy": proxy, **settings}}
    )
    local = config.local
    refuse_blank(query)
    query = query[: local.max_query_chars]
    servers = (local.search_url,) if isinstance(local.search_url, str) else tuple(local.search_url)
    route = _Route(
        servers, top_k, timeout, local.proxy, local.max_attempts, local.attempt_timeout, local.batch_wait,
        local.max_queries_per_request, resolve_secret(local.api_key, local.api_key_file, RETRIEVAL_API_KEY_ENV),
    )
    state = _STATE.get()
    coalescer = state.coalescers.get(route)
    if coalescer is None:
        coalescer = state.coalescers[route] = Coalescer(
            functools.partial(_retrieve, route, state=state), max_items=route.max_queries_per_request,
            wait=route.batch_wait, timeout=route.timeout, split=_refused_as_invalid, what="local search",
            secrets=route.secrets,
        )
    return await state.cache.get_or_run(
        cache_key("local", servers, query, top_k), lambda: coalescer.submit(query), use_cache=local.cache, max_size=local.cache_size
    )


def _refused_as_invalid(exc: Exception) -> bool:
    return isinstance(exc, RequestFailed) and exc.status in _INVALID_REQUEST_STATUSES


async def _retrieve(route: _Route, queries: list[str], deadline: float, *, state: _LoopState) -> list[list[dict]]:
    """Send one request before ``deadline`` (monotonic), failing over between servers; return one
    document list per query."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise RequestFailed("retrieve: no time was left for this request")
    state.batches += 1
    # return_scores=True on purpose: upstream's server unpacks a two-query answer without scores
    # as (results, scores) and returns garbage (docs/protocols.md, "The retrieval API"); the scored shape is always right.
    payload = {"queries": queries, "topk": route.top_k, "return_scores": True}
    policy = RetryPolicy(max_attempts=route.max_attempts, deadline_s=left, attempt_timeout_s=route.attempt_timeout)
    headers = {} if route.api_key is None else {"Authorization": f"Bearer {route.api_key}"}
    try:
        body = await request_json(
            "POST", state.servers_in_order(route.servers), json=payload, headers=headers, policy=policy,
            what="retrieve", redact=route.secrets, shared_health=True, on_attempt=state.count_attempt,
            **proxy_kwargs(route.proxy),
        )
    except RequestFailed as exc:
        if exc.status in (401, 403):
            raise RequestFailed(
                f"{exc}; the retrieval server wants the token of its --api_key: set search_r1.local.api_key "
                f"or export {RETRIEVAL_API_KEY_ENV}, or point search_r1.local.api_key_file at a file holding it",
                status=exc.status,
            ) from None
        if len(route.servers) > 1 and (exc.status is None or exc.status == 429 or exc.status >= 500):
            raise RequestFailed(f"all {len(route.servers)} retrieval servers failed: {exc}", status=exc.status) from None
        raise
    return parse_retrieve_response(body, len(queries))


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
            documents.append({"document": {"contents": contents}} if contents else document("", ""))
        parsed.append(documents)
    return parsed
