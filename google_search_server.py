"""The plugin's client for Google search through serper.dev (a client, despite upstream's module name).

Result pages can be read for context, as upstream did.

``google_search`` asks serper.dev (``POST {"q", "num", "gl": "us", "hl": "en"}`` with the
``X-API-KEY`` header) for ``top_k`` organic results and returns them in the local backend's
format, ``[{"document": {"contents": '"title"\\ncontext'}}, ...]``:

* ``snippet_only=True``: the context is the result's snippet;
* ``snippet_only=False``: every result page is fetched at once (size cap, at most five
  redirects), decoded (declared charset, else detected with chardet) and turned into text
  paragraphs in a small pool of worker threads, so that parsing never stalls the event loop the
  other trajectories run on, and the paragraphs that contain a piece of the snippet are kept.
  Fetching and parsing a page together must end within ``page_timeout`` and the search's own
  deadline (``timeout``): a page not read by then is dropped (its parsing too, if it has not
  started) and its snippet used, so a search answers in time however slow its pages are. Pages on
  loopback, private, link-local or other non-public addresses are not fetched, redirects included
  (``search_r1_slime.public_web``), unless ``allow_private_pages``. A page that fails, is refused
  or matches nothing falls back to the snippet; it never fails the search.

The API key comes from the argument (config ``google.api_key``), the file ``api_key_file`` or the
``SERPER_API_KEY`` environment variable; it is never logged nor put in an error message. Calls go through
``http_client.request_json`` (shared session; retries of refused or dropped connections,
timeouts, 429 and 5xx until ``timeout``, with the callers of one event loop sharing what they
learn about serper.dev while it fails) and answers are shared and cached like the local
backend's (``search_cache``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import chardet
from yarl import URL

from local_dense_retriever.fingerprint import fingerprint_id
from search_r1_slime.http_client import PerLoop, RequestFailed, RetryPolicy, excerpt, proxy_kwargs, request_json, shared_session
from search_r1_slime.public_web import host_problem
from search_r1_slime.search_cache import CacheStats, SearchCache, cache_key, document, refuse_blank
from search_r1_slime.search_db import PaidLedger
from search_r1_slime.settings import DEFAULTS, SERPER_API_KEY_ENV, SearchR1Config, resolve_secret

logger = logging.getLogger(__name__)

# chardet is pure Python (it runs in the parsing thread); a prefix is plenty to tell encodings apart.
_DETECT_BYTES = 64 * 1024
_MAX_REDIRECTS = 5


async def _stop_parser(executor: concurrent.futures.Executor) -> None:
    executor.shutdown(wait=False, cancel_futures=True)  # its threads end once the pages being parsed are done


# A few threads per event loop parse its pages. Parsing is pure Python, so more threads would not
# parse faster (the GIL), only take the GIL from the event loop more often: reading five ~780 KB
# pages at once stalled the loop 190-460 ms with a thread per page, 40-120 ms with one thread,
# 730-830 ms parsing on the loop (bench/page_parsing.py, 7 runs on a busy 2-core machine). One
# thread, though, made every search's pages wait behind one slow page of another search; a page
# past its search's deadline is dropped, but one already being parsed holds its thread until done.
# Made per loop, like every asyncio companion here, so that none outlives its loop or a fork
# (stopped when its loop shuts down).
_PARSER_THREADS = 4
_PARSERS: PerLoop[concurrent.futures.Executor] = PerLoop(
    lambda: concurrent.futures.ThreadPoolExecutor(max_workers=_PARSER_THREADS, thread_name_prefix="page-parser"),
    close=_stop_parser,
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "Mozilla/5.0 (compatible; search-r1-slime/0.1)"

_CACHE: PerLoop[SearchCache] = PerLoop(SearchCache)
# The country and language serper.dev is asked for: part of every request and of the fingerprint.
_LOCALE = {"gl": "us", "hl": "en"}


def fingerprint(google: Mapping[str, Any], with_links: bool = False) -> str:
    """The id of what answers a Google search: the provider and the settings (``search_r1.google``)
    that shape its answer, never the key (see local_dense_retriever/fingerprint.py). ``with_links``:
    results carry their pages' addresses (the page tool's searches), a different answer."""
    parts = {"provider": "serper.dev", "endpoint": google["endpoint"], **_LOCALE, "snippet_only": google["snippet_only"]}
    if not google["snippet_only"]:
        parts.update(page_max_bytes=google["page_max_bytes"], allow_private_pages=google["allow_private_pages"])
    if with_links:  # only then, so that every other search keeps the fingerprint it had
        parts.update(with_links=True)
    return fingerprint_id(parts)


def google_search_stats() -> CacheStats:
    """Cache counters (``search_cache.CacheStats``) of the running event loop."""
    return _CACHE.get().stats


async def google_search(
    api_key: str | None,
    query: str,
    top_k: int = DEFAULTS.topk,
    timeout: float = DEFAULTS.search_timeout,
    proxy: str | None = DEFAULTS.google.proxy,
    snippet_only: bool = DEFAULTS.google.snippet_only,
    ledger: PaidLedger | None = None,
    with_links: bool = False,
    **settings: Any,
) -> list[dict]:
    """Search Google through serper.dev; see the module docstring for what comes back.

    ``timeout`` bounds the whole search (retries and page fetching included). ``settings``: the
    other keys of ``search_r1.google`` (``search_r1_slime.settings.GoogleSettings``: defaults and
    ranges), checked like the configuration (``ConfigError`` names a bad one). ``ledger``: the
    search database's paid-search cache and budget (``search_db.PaidLedger``), which every request
    that would be sent goes through. Raises
    ``ValueError`` when no API key is configured, ``http_client.RequestFailed`` when serper.dev
    does not answer properly in time, or at once for a blank query (never sent: it would be paid for).
    ``with_links``: each result also carries its page's address as ``"url"`` (the page tool's
    search results show it, so the model can open the page).
    """
    config = SearchR1Config.checked(
        {
            "topk": top_k,
            "search_timeout": timeout,
            "google": {"api_key": api_key, "proxy": proxy, "snippet_only": snippet_only, **settings},
        }
    )
    google = config.google
    refuse_blank(query)
    key = resolve_secret(google.api_key, google.api_key_file, SERPER_API_KEY_ENV)
    if key is None:
        raise ValueError(
            f"no serper.dev API key: set google.api_key_file (the path of a file holding the key) or google.api_key "
            f"under search_r1: in the YAML given to --custom-config-path (or in SEARCH_R1_CONFIGS), or export {SERPER_API_KEY_ENV}"
        )
    plan = _Settings(
        endpoint=google.endpoint,
        proxy=google.proxy,
        timeout=timeout,
        policy=RetryPolicy(max_attempts=google.max_attempts, deadline_s=timeout, attempt_timeout_s=google.attempt_timeout),
        page_timeout=None if google.snippet_only else google.page_timeout,
        page_max_bytes=google.page_max_bytes,
        allow_private_pages=google.allow_private_pages,
        with_links=with_links,
    )

    async def run() -> list[dict]:
        if ledger is not None:
            return await ledger.pay(query, top_k, lambda: _search(key, query, top_k, plan))
        return await _search(key, query, top_k, plan)

    return await _CACHE.get().get_or_run(
        cache_key("google", (google.endpoint, google.snippet_only, with_links), query, top_k),
        run,
        use_cache=google.cache,
        max_size=google.cache_size,
    )


@dataclass(frozen=True)
class _Settings:
    endpoint: str
    proxy: str | None
    timeout: float
    policy: RetryPolicy
    page_timeout: float | None  # None: snippets only, no page fetching
    page_max_bytes: int
    allow_private_pages: bool
    with_links: bool = False


async def _search(key: str, query: str, top_k: int, settings: _Settings) -> list[dict]:
    started = time.monotonic()
    extra = proxy_kwargs(settings.proxy)
    # Errors quote the response body; redact keeps a server that echoes the key from leaking it.
    body = await request_json(
        "POST",
        settings.endpoint,
        json={"q": query, "num": top_k, **_LOCALE},
        headers={"X-API-KEY": key},
        policy=settings.policy,
        what="serper search",
        redact=(key,),
        shared_health=True,
        **extra,
    )
    items = body.get("organic") if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        shape = f"keys {excerpt(str(sorted(body)), (key,))}" if isinstance(body, dict) else type(body).__name__
        raise RequestFailed(f"serper search answered without an 'organic' list of results (got {shape})")
    items = items[:top_k]
    snippets = [_snippet_text(str(item.get("snippet") or "")) for item in items]
    contexts = snippets
    remaining = settings.timeout - (time.monotonic() - started)
    if settings.page_timeout is not None and items and remaining > 0:
        page_timeout = min(settings.page_timeout, remaining)
        texts = await asyncio.gather(
            *(_page_text(str(item.get("link") or ""), page_timeout, settings, extra) for item in items)
        )
        contexts = [
            (collect_context(str(item.get("snippet") or ""), text) if text else "") or snippet
            for item, text, snippet in zip(items, texts, snippets)
        ]
    return [
        {**document(str(item.get("title") or ""), context), **({"url": str(item.get("link") or "")} if settings.with_links else {})}
        for item, context in zip(items, contexts)
        if item.get("title") or context
    ]


def parse_snippet(snippet: str) -> list[str]:
    """The pieces of a snippet (separated by "...") long enough to look for in a page."""
    pieces = (" ".join(piece.split()) for piece in snippet.split("..."))
    return [piece for piece in pieces if len(piece.split()) > 5]


def _snippet_text(snippet: str) -> str:
    # Upstream keeps only the long pieces; a short snippet is still better than nothing.
    return " ".join(parse_snippet(snippet)) or " ".join(snippet.split())


def collect_context(snippet: str, page_text: str) -> str:
    """The paragraphs (lines) of ``page_text`` that contain a piece of ``snippet``, in order found."""
    flat = page_text.replace("\n", " ")  # same length, so positions carry over to page_text
    paragraphs: list[str] = []
    for piece in parse_snippet(snippet):
        position = flat.find(piece)
        if position < 0:
            continue
        start = page_text.rfind("\n", 0, position) + 1
        end = page_text.find("\n", position + len(piece))
        paragraph = page_text[start : end if end >= 0 else len(page_text)].strip()
        if paragraph and paragraph not in paragraphs:
            paragraphs.append(paragraph)
    return "\n".join(paragraphs)


async def _page_text(url: str, timeout: float, settings: _Settings, extra: dict[str, Any]) -> str:
    """The text of one result page, or "" when it cannot or may not be had within ``timeout`` (never raises)."""
    try:
        return await asyncio.wait_for(_read_page(url, settings, extra), timeout)
    except Exception as exc:  # noqa: BLE001 - a page is optional: any failure means "no page"
        logger.debug("page %s skipped: %s", url, type(exc).__name__)
        return ""


async def _read_page(url: str, settings: _Settings, extra: dict[str, Any]) -> str:
    raw, charset = await download_page(url, settings.page_max_bytes, settings.allow_private_pages, extra)
    # chardet and the HTML parser take tens of ms of CPU for a large page: off the event loop.
    # Cancelled (past the deadline), a page still waiting for a thread is never parsed.
    return await off_loop(_text_of, raw, charset)


class PageUnavailable(Exception):
    """A page that is not to be had; the message says why in a few words (the page tool shows it
    to the model). ``kind`` names the reason for counting: refused, http_status, not_text, redirects."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


async def download_page(url: str, max_bytes: int, allow_private: bool, extra: dict[str, Any]) -> tuple[bytes, str | None]:
    """The first ``max_bytes`` of a text page and its declared charset, following redirects (each
    checked like the link itself); raises ``PageUnavailable`` when the page is not to be had."""
    # Through a proxy, the proxy connects (and resolves): only the per-hop check applies.
    session = shared_session(public_only=not allow_private and "proxy" not in extra)
    target = URL(url)
    for _ in range(_MAX_REDIRECTS + 1):
        if target.scheme not in ("http", "https") or not target.host:
            raise PageUnavailable("refused", f"not an http(s) URL: {str(target)[:200]}")
        if not allow_private and (problem := await host_problem(target.host, target.port)) is not None:
            logger.debug("page %s not fetched: %s", target, problem)
            raise PageUnavailable("refused", f"address refused: {problem}")
        async with session.get(target, allow_redirects=False, headers={"User-Agent": _USER_AGENT}, **extra) as resp:
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                target = resp.url.join(URL(resp.headers["Location"]))
                continue
            if resp.status != 200:
                logger.debug("page %s skipped: HTTP %d", target, resp.status)
                raise PageUnavailable("http_status", f"the server answered HTTP {resp.status}")
            if not _is_text(resp.content_type):
                logger.debug("page %s skipped: %s", target, resp.content_type)
                raise PageUnavailable("not_text", f"not a text page ({resp.content_type})")
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) >= max_bytes:
                    break
            return bytes(raw[:max_bytes]), resp.charset
    logger.debug("page %s skipped: more than %d redirects", url, _MAX_REDIRECTS)
    raise PageUnavailable("redirects", f"more than {_MAX_REDIRECTS} redirects")


async def off_loop(function: Any, *args: Any) -> Any:
    """``function(*args)`` in this event loop's page-parsing threads, so that parsing a page never
    stalls the loop the other trajectories run on (nor waits behind one slow page)."""
    return await asyncio.get_running_loop().run_in_executor(_PARSERS.get(), function, *args)


def _text_of(raw: bytes, charset: str | None) -> str:
    return html_to_text(decode_page(raw, charset))


def _is_text(content_type: str) -> bool:
    return content_type.startswith("text/") or "html" in content_type or "xml" in content_type


def decode_page(raw: bytes, declared_charset: str | None) -> str:
    """Decode with the charset the server declared, else the one chardet detects, else UTF-8."""
    for encoding in (declared_charset, chardet.detect(raw[:_DETECT_BYTES])["encoding"], "utf-8"):
        if encoding:
            try:
                return raw.decode(encoding, errors="replace")
            except LookupError:  # an encoding name Python does not know
                continue
    return raw.decode("utf-8", errors="replace")


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page, one line per block element."""

    _BLOCKS = frozenset(
        "address article aside blockquote br dd div dl dt figcaption footer h1 h2 h3 h4 h5 h6 header hr li "
        "main nav ol p pre section table td th title tr ul".split()
    )
    _INVISIBLE = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self._INVISIBLE:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._INVISIBLE:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_to_text(page: str) -> str:
    """Visible text, one paragraph a line, spaces squeezed (snippets are matched against it)."""
    extractor = _TextExtractor()
    extractor.feed(page)
    extractor.close()
    lines = (" ".join(line.split()) for line in "".join(extractor.parts).split("\n"))
    return "\n".join(line for line in lines if line)
