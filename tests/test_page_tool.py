"""The page tool (``<access> URL </access>``) against loopback web pages: what the model reads for a
page, the one line it reads for each failure and its count, the seen-URL rule, and the cache."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from generate_with_search import resolve_config
from search_r1_slime import page_tool
from search_r1_slime.http_client import close_shared_session
from search_r1_slime.settings import DEFAULTS, ConfigError
from tests.fakes.loopback import closed_port
from tests.fakes.pages import Page, PageServer
from tests.fakes.real_pages import NEWS

ARTICLE = Page(NEWS.html.encode("utf-8"), content_type="text/html; charset=utf-8")
MAIN_TEXT = "\n".join(NEWS.main)
PAGES = {
    "/news": ARTICLE,
    "/moved": Page(b"", status=301, location="/news"),
    "/gone": Page(b"gone", status=404),
    "/broken": Page(b"oops", status=503),
    "/logo.png": Page(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, content_type="image/png"),
    "/huge": Page(b"<html><body><p>" + b"word " * 20_000 + b"</p></body></html>"),  # 100 KB
    "/endless": Page(b"<p>" + b"more " * 20 + b"</p>\n", endless=True),
    "/empty": Page(b"<html><head><script>var a = 1;</script></head><body></body></html>"),
    **{f"/loop{i}": Page(b"", status=302, location=f"/loop{i + 1}") for i in range(7)},
}


def settings(**overrides) -> dict:
    # Pages are on loopback, which only allow_private_pages lets through (its default refuses it).
    return {**DEFAULTS.access.model_dump(), "allow_private_pages": True, "page_max_bytes": 50_000, "page_timeout": 1.0, **overrides}


def config(**overrides) -> dict:
    return {"access": settings(**overrides)}


@pytest.fixture
async def pages():
    async with PageServer(dict(PAGES)) as server:
        yield server
    await close_shared_session()


def seen(*urls: str) -> dict:
    metrics = page_tool.new_metrics()
    page_tool.note_seen(metrics, " ".join(urls))
    return metrics


async def test_a_page_is_read_as_its_main_text(pages):
    metrics = seen(pages.url("/news"))
    assert await page_tool.access_body(f" {pages.url('/news')} ", config(), metrics) == MAIN_TEXT
    assert metrics["accesses"] == 1 and metrics["access_fetches"] == 1 and len(metrics["access_latencies"]) == 1
    assert sum(metrics["access_failures"].values()) == 0


async def test_a_redirect_is_followed(pages):
    metrics = seen(pages.url("/moved"))
    assert await page_tool.access_body(pages.url("/moved"), config(), metrics) == MAIN_TEXT
    assert pages.fetched == {"/moved": 1, "/news": 1}


@pytest.mark.parametrize(
    ("path", "kind", "reason"),
    [
        ("/gone", "http_status", "the server answered HTTP 404"),
        ("/broken", "http_status", "the server answered HTTP 503"),
        ("/logo.png", "not_text", "not a text page (image/png)"),
        ("/huge", "too_big", "the page is larger than 50000 bytes"),
        ("/endless", "timeout", "no complete answer within 1 s"),
        ("/empty", "no_text", "no readable text was found on the page"),
        ("/loop0", "redirects", "more than 5 redirects"),
    ],
)
async def test_each_failure_is_one_line_the_model_reads_and_is_counted(pages, path, kind, reason):
    url = pages.url(path)
    metrics = seen(url)
    line = await page_tool.access_body(url, config(page_max_bytes=50_000 if path == "/huge" else 2_000_000), metrics)
    assert line == f"The page {url} could not be opened: {reason}."
    assert metrics["access_failures"] == {**dict.fromkeys(page_tool.FAILURE_KINDS, 0), kind: 1}


async def test_a_page_of_exactly_the_cap_is_read(pages):
    size = len(ARTICLE.body)
    metrics = seen(pages.url("/news"))
    assert await page_tool.access_body(pages.url("/news"), config(page_max_bytes=size, cache=False), metrics) == MAIN_TEXT
    line = await page_tool.access_body(pages.url("/news"), config(page_max_bytes=size - 1, cache=False), metrics)
    assert line.endswith(f"could not be opened: the page is larger than {size - 1} bytes.")


async def test_a_private_address_is_refused_by_default_without_a_request(pages):
    url = pages.url("/news")
    metrics = seen(url)
    line = await page_tool.access_body(url, config(allow_private_pages=False), metrics)
    assert line == f"The page {url} could not be opened: address refused: 127.0.0.1 resolves to non-public address(es) 127.0.0.1."
    assert metrics["access_failures"]["refused"] == 1 and pages.fetched == {}


async def test_an_unreachable_server_is_one_line(pages):
    url = f"http://127.0.0.1:{closed_port()}/x"
    metrics = seen(url)
    line = await page_tool.access_body(url, config(), metrics)
    assert line == f"The page {url} could not be opened: the server could not be reached (ClientConnectorError)."
    assert metrics["access_failures"]["unreachable"] == 1


async def test_only_a_url_seen_earlier_is_opened_unless_any_public_url(pages):
    url = pages.url("/news")
    metrics = seen(pages.url("/gone"))
    line = await page_tool.access_body(url, config(), metrics)
    assert line == f"The page {url} could not be opened: only a URL shown in an earlier result can be opened."
    assert metrics["access_failures"]["not_seen"] == 1 and pages.fetched == {}
    assert await page_tool.access_body(url, config(any_public_url=True), metrics) == MAIN_TEXT


def test_urls_are_noted_without_trailing_punctuation():
    metrics = seen('see http://a.example/x?y=1, and (https://b.example/p). "http://c.example/q"')
    assert metrics["seen_urls"] == ["http://a.example/x?y=1", "https://b.example/p", "http://c.example/q"]


async def test_concurrent_reads_of_one_url_make_one_request_and_later_reads_none(pages):
    url = pages.url("/news")
    trajectories = [seen(url) for _ in range(8)]
    bodies = await asyncio.gather(*(page_tool.access_body(url, config(), m) for m in trajectories))
    assert bodies == [MAIN_TEXT] * 8
    assert await page_tool.access_body(url, config(), trajectories[0]) == MAIN_TEXT
    assert pages.fetched == {"/news": 1}
    assert sum(m["access_fetches"] for m in trajectories) == 1
    stats = page_tool.access_stats()
    assert (stats.sent, stats.in_flight_hits, stats.cache_hits) == (1, 7, 1)


async def test_a_timeout_is_not_cached_but_a_definite_failure_is(pages):
    for path in ("/endless", "/gone"):
        for _ in range(2):
            await page_tool.access_body(pages.url(path), config(page_timeout=0.3), seen(pages.url(path)))
    assert pages.fetched == {"/endless": 2, "/gone": 1}


def test_search_results_show_their_links():
    results = [
        {"document": {"contents": '"Bridge"\nThe council voted.'}, "url": "https://news.example/bridge"},
        {"document": {"contents": '"No link"\nText.'}},
    ]
    assert page_tool.passages_with_links(results) == (
        'Doc 1(Title: "Bridge") URL: https://news.example/bridge\nThe council voted.\nDoc 2(Title: "No link") Text.\n'
    )


def test_the_page_tool_over_the_local_corpus_is_refused_unless_any_public_url():
    # wiki-18 passages carry no page addresses: with the seen-URL rule the model could open nothing.
    with pytest.raises(ConfigError) as info:
        resolve_config(SimpleNamespace(search_r1={"access": {"enabled": True}}))
    assert info.value.problems == [
        "search_r1.access.enabled with search_backend local: the local corpus's passages carry no page addresses, "
        "so the model could open no page; use search_backend google, or set search_r1.access.any_public_url"
    ]
    assert resolve_config(SimpleNamespace(search_r1={"access": {"enabled": True, "any_public_url": True}}))["access"]["enabled"]
