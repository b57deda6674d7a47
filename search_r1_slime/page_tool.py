"""Deep-research mode: the page tool the model calls, ``<access> URL </access>``, and the budgets
that let a trajectory run for tens of turns and still end on an answer (docs/deep_research.md).

The design follows ASearcher (Gao et al., 2025, https://github.com/inclusionAI/ASearcher): a
second tool, ``<access>``, that reads one web page through a cache, and trajectories of up to 128
turns. The code and wording here are ours.

A page is read through the same reader the Google backend uses for result pages
(``google_search_server.download_page``: public addresses only unless
``access.allow_private_pages``, every redirect checked, a size cap); its main text is extracted
with trafilatura (boilerplate such as navigation, footers, cookie banners and scripts dropped) in
the page-parsing thread, off the event loop. Each URL is read once per event loop: concurrent
readers of the same URL share one fetch (single flight) and later ones get the cached text
(``search_cache.SearchCache``). Only URLs shown in an earlier observation of the same trajectory
may be opened, unless ``access.any_public_url``. Whatever goes wrong is one line the model reads
and a count in ``sample.metadata["search_r1"]["access_failures"]``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from search_r1_slime.http_client import PerLoop, proxy_kwargs
from search_r1_slime.search_cache import CacheStats, SearchCache

logger = logging.getLogger(__name__)

# What the model reads at the end of its last tool round's observation (inside the
# <information> block, so the format check still sees Search-R1's structure) when a budget (tool
# calls, response or context tokens) ended the tool use: its next turn is the final one, as after
# max_turns. No tags in it: the format check would read them.
FINAL_TURN_NOTICE = "\nThe budget for tools is used up: no more searches or pages. Give your final answer now."

# Failure kinds, each counted per trajectory (search_r1/access/<kind>_ratio).
FAILURE_KINDS = ("not_seen", "refused", "timeout", "http_status", "not_text", "too_big", "redirects", "no_text", "unreachable")

# http(s) URLs in an observation: what a later <access> may open.
_URL = re.compile(r"https?://[^\s<>\"'`]+")
_URL_TRAILING = ".,;:!?)]}"

_CACHE: PerLoop[SearchCache] = PerLoop(SearchCache)


def access_stats() -> CacheStats:
    """Page cache counters of the running event loop: ``sent`` pages were fetched, the other reads
    were served from the cache or from the same fetch in flight."""
    return _CACHE.get().stats


def clean_url(text: str) -> str:
    """A URL as the model wrote it or an observation showed it: surrounding spaces and trailing
    punctuation dropped."""
    return text.strip().rstrip(_URL_TRAILING)


def urls_in(text: str) -> list[str]:
    return [clean_url(match) for match in _URL.findall(text)]


def passages_with_links(results: list[dict]) -> str:
    """Search-R1's passage list with each result's address, so that the model can open it:
    ``Doc {i}(Title: {title}) URL: {url}`` and the text on the next line."""
    lines = []
    for i, item in enumerate(results, start=1):
        title, _, text = item["document"]["contents"].partition("\n")
        url = item.get("url") or item["document"].get("url") or ""
        lines.append(f"Doc {i}(Title: {title}) URL: {url}\n{text}\n" if url else f"Doc {i}(Title: {title}) {text}\n")
    return "".join(lines)


@dataclasses.dataclass(frozen=True)
class PageRead:
    """What reading a page gave: its main text, or the kind and reason of the failure."""

    text: str = ""
    failure: str | None = None
    reason: str = ""


class _Transient(Exception):
    """A failure that may not happen again (timeout, connection): not cached."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def require_extractor() -> None:
    """Fail before the first generation, with the fix, when the extraction library is missing."""
    try:
        import trafilatura  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"search_r1.access.enabled needs trafilatura ({exc}): pip install 'search-r1-slime[deep_research]'"
        ) from exc


def extract_main_text(raw: bytes, charset: str | None) -> str:
    """The main text of an HTML page, one paragraph a line (trafilatura: boilerplate dropped,
    tables kept, comments left out)."""
    import trafilatura

    from google_search_server import decode_page

    page = decode_page(raw, charset)
    text = trafilatura.extract(page, include_comments=False, include_tables=True, favor_precision=False, deduplicate=False)
    return (text or "").strip()


async def _fetch(url: str, settings: Mapping[str, Any]) -> PageRead:
    from google_search_server import PageUnavailable, download_page, off_loop

    limit = settings["page_max_bytes"]
    extra = proxy_kwargs(settings["proxy"])
    try:
        # One byte more than allowed tells a page of exactly the cap from a larger one.
        raw, charset = await asyncio.wait_for(
            download_page(url, limit + 1, settings["allow_private_pages"], extra), settings["page_timeout"]
        )
    except PageUnavailable as exc:
        return PageRead(failure=exc.kind, reason=str(exc))
    except asyncio.TimeoutError:
        raise _Transient("timeout", f"no complete answer within {settings['page_timeout']:g} s") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise _Transient("unreachable", f"the server could not be reached ({type(exc).__name__})") from None
    if len(raw) > limit:
        return PageRead(failure="too_big", reason=f"the page is larger than {limit} bytes")
    try:
        text = await off_loop(extract_main_text, raw, charset)
    except Exception as exc:  # noqa: BLE001 - a page the extractor cannot parse is a page without text, not a crashed rollout
        logger.warning("main text of %s could not be extracted: %s: %s", url, type(exc).__name__, exc)
        text = ""
    if not text:
        return PageRead(failure="no_text", reason="no readable text was found on the page")
    return PageRead(text=text)


async def read_page(url: str, settings: Mapping[str, Any], on_fetch: Any = None) -> PageRead:
    """Read ``url`` (``settings``: ``search_r1.access``) through the per-loop cache; never raises
    for a page that cannot be had. ``on_fetch`` is called when this read is the one that fetches."""

    async def run() -> PageRead:
        if on_fetch is not None:
            on_fetch()
        return await _fetch(url, settings)

    try:
        return await _CACHE.get().get_or_run(
            ("access", url), run, use_cache=settings["cache"], max_size=settings["cache_size"]
        )
    except _Transient as exc:
        return PageRead(failure=exc.kind, reason=str(exc))


def as_search_structure(response: str, config: Mapping[str, Any]) -> str:
    """The response as Search-R1's format check reads it: a page read has the structure of a search
    (a tool call, then its ``<information>``), so with the page tool on its tag is read as ``search``."""
    if not config["access"]["enabled"]:
        return response
    return re.sub(rf"<(/?){re.escape(config['access']['tag'])}>", r"<\1search>", response)


def new_metrics() -> dict[str, Any]:
    """The page tool's and the budgets' counters, added to a trajectory's ``search_r1`` metadata."""
    return {
        "accesses": 0, "access_fetches": 0, "access_latencies": [],
        "access_failures": dict.fromkeys(FAILURE_KINDS, 0),
        "tool_calls": 0, "final_turn": None, "seen_urls": [],
    }


def note_seen(metrics: dict[str, Any], text: str) -> None:
    """Remember the URLs an observation showed: the model may open them later."""
    seen = metrics["seen_urls"]
    for url in urls_in(text):
        if url not in seen:
            seen.append(url)


async def access_body(content: str, config: Mapping[str, Any], metrics: dict[str, Any]) -> str:
    """The observation text for ``<access> content </access>``: the page's main text, or one line
    saying why it could not be read."""
    settings = config["access"]
    url = clean_url(content)
    metrics["accesses"] += 1
    if not settings["any_public_url"] and url not in metrics["seen_urls"]:
        read = PageRead(failure="not_seen", reason="only a URL shown in an earlier result can be opened")
    else:
        started = time.monotonic()
        def fetching() -> None:  # this trajectory's read is the one that goes out
            metrics["access_fetches"] += 1

        read = await read_page(url, settings, on_fetch=fetching)
        metrics["access_latencies"].append(time.monotonic() - started)
    if read.failure is not None:
        metrics["access_failures"][read.failure] += 1
        return f"The page {url[:300]} could not be opened: {read.reason}."
    return read.text
