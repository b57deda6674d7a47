"""The serper.dev backend against a strict loopback serper stand-in and loopback web pages."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import google_search_server
from google_search_server import collect_context, google_search, google_search_stats, html_to_text
from search_r1_slime import public_web
from search_r1_slime.http_client import RequestFailed, close_shared_session
from tests.fakes.pages import Page, PageServer, html_page
from tests.fakes.serper import FakeSerper, organic

KEY = "sk-test-0123456789abcdef"
FAST = {"max_attempts": 3, "attempt_timeout": 1.0}
# The page servers here are on loopback, which is not fetched by default.
LOOPBACK_PAGES = {"allow_private_pages": True}

ZH = "北京是中华人民共和国的首都，也是全国的政治、文化和国际交往中心，有三千多年的建城史。"
JA = "東京は日本の首都であり、世界有数の大都市です。江戸時代から政治と文化の中心として発展してきました。"
FR = "Le café de la gare était fermé ce matin, alors nous avons mangé une crème brûlée à côté du marché."


def contents(title: str, context: str) -> dict:
    return {"document": {"contents": f'"{title}"\n{context}'}}


@pytest.fixture(autouse=True)
async def session_cleanup(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    yield
    await close_shared_session()


@pytest.fixture
async def serper():
    results = {
        "capital of france": [
            organic("Paris - Wikipedia", "http://127.0.0.1:9/paris", "Paris is the capital and largest city of France, with an estimated population"),
            organic("", "http://127.0.0.1:9/x", "short one"),
            organic("Untitled", "", ""),
        ],
    }
    async with FakeSerper(results, api_key=KEY) as server:
        yield server


async def test_snippet_only_follows_the_serper_protocol_and_upstream_format(serper):
    config = {"api_key": KEY, "snippet_only": True, "proxy": None, "endpoint": serper.endpoint}
    result = await google_search(query="capital of france", top_k=3, timeout=30, **config)
    assert result == [
        contents("Paris - Wikipedia", "Paris is the capital and largest city of France, with an estimated population"),
        contents("No title.", "short one"),
        contents("Untitled", "No snippet available."),
    ]
    [(headers, body)] = serper.requests
    assert headers["X-API-KEY"] == KEY
    assert body == {"q": "capital of france", "num": 3, "gl": "us", "hl": "en"}


async def test_key_comes_from_the_environment_when_not_configured(serper, monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    result = await google_search(None, "capital of france", top_k=1, snippet_only=True, endpoint=serper.endpoint)
    assert len(result) == 1
    assert serper.requests[0][0]["X-API-KEY"] == KEY


async def test_missing_key_fails_before_any_request_and_says_how_to_set_it(serper):
    with pytest.raises(ValueError, match=r"google\.api_key .* SERPER_API_KEY"):
        await google_search(None, "capital of france", endpoint=serper.endpoint)
    assert serper.requests == []


async def test_key_never_appears_in_errors_or_logs(serper, caplog):
    caplog.set_level(logging.DEBUG)
    serper.failures.extend([500, "hang", (403, '{"message": "Unauthorized."}', None)])
    with pytest.raises(RequestFailed, match="HTTP 403") as info:
        await google_search(KEY, "capital of france", snippet_only=True, endpoint=serper.endpoint, timeout=5, attempt_timeout=0.3)
    assert len(serper.requests) == 3
    assert caplog.records, "the retries should have been logged"
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert KEY not in caplog.text
    # Even a server that echoes the key back gets it into neither the retry logs nor our error.
    caplog.clear()
    serper.failures.extend([(503, f"overloaded for key {KEY}", None), (401, f"invalid key {KEY}", None)])
    with pytest.raises(RequestFailed, match="HTTP 401: 'invalid key <redacted>'") as info:
        await google_search(KEY, "capital of france", snippet_only=True, endpoint=serper.endpoint, **FAST)
    assert "overloaded for key <redacted>" in caplog.text
    assert KEY not in str(info.value) and KEY not in caplog.text


async def test_429_with_retry_after_and_5xx_are_retried(serper):
    serper.failures.extend([(429, "slow down", {"Retry-After": "0.3"}), 502])
    started = time.monotonic()
    result = await google_search(KEY, "capital of france", top_k=1, snippet_only=True, endpoint=serper.endpoint, **FAST)
    assert result == [contents("Paris - Wikipedia", "Paris is the capital and largest city of France, with an estimated population")]
    assert len(serper.requests) == 3
    assert time.monotonic() - started >= 0.3


async def test_a_hanging_serper_fails_within_the_timeout(serper):
    serper.failures.extend(["hang"] * 5)
    started = time.monotonic()
    with pytest.raises(RequestFailed, match="TimeoutError"):
        await google_search(KEY, "capital of france", snippet_only=True, endpoint=serper.endpoint, timeout=1.0)
    assert time.monotonic() - started < 1.5


async def test_a_dead_endpoint_fails_with_request_failed():
    with pytest.raises(RequestFailed, match="ClientConnectorError"):
        await google_search(KEY, "q", snippet_only=True, endpoint="http://127.0.0.1:9/search", timeout=1.0)


async def test_an_answer_without_organic_results_is_an_error():
    async with FakeSerper({}, api_key=KEY) as server:
        server.failures.append((200, '{"message": "quota exceeded"}', None))
        with pytest.raises(RequestFailed, match=r"without an 'organic' list .*\['message'\]"):
            await google_search(KEY, "q", snippet_only=True, endpoint=server.endpoint)


async def test_answers_are_cached_and_identical_queries_in_flight_go_out_once(serper):
    calls = [google_search(KEY, "capital of france", top_k=2, snippet_only=True, endpoint=serper.endpoint) for _ in range(5)]
    first = await asyncio.gather(*calls)
    assert all(r == first[0] for r in first)
    assert await google_search(KEY, "capital of france", top_k=2, snippet_only=True, endpoint=serper.endpoint) == first[0]
    assert len(serper.requests) == 1
    stats = google_search_stats()
    assert (stats.sent, stats.in_flight_hits, stats.cache_hits) == (1, 4, 1)
    await google_search(KEY, "capital of france", top_k=2, snippet_only=True, endpoint=serper.endpoint, cache=False)
    assert len(serper.requests) == 2


# The snippet is ASCII, so it is found whatever the decoding; the paragraph around it comes back
# right only when the page was decoded right.
MARKER = "and this sentence carries the answer we want"


@pytest.mark.parametrize(
    ("encoding", "native", "declared"),
    [("utf-8", ZH + JA, False), ("gbk", ZH, False), ("latin-1", FR, False), ("shift_jis", JA, False), ("gbk", ZH, True)],
    ids=["utf-8", "gbk", "latin-1", "shift-jis", "gbk-declared"],
)
async def test_pages_are_decoded_and_the_paragraph_around_the_snippet_kept(encoding, native, declared):
    paragraph = f"{native} {MARKER}."
    page = html_page("t", [native[:10], paragraph, "footer"], encoding, declare_charset=declared)
    async with PageServer({"/p": page}) as site:
        results = {"q": [organic("T", site.url("/p"), f"Jan 1, 2020 ... {MARKER} ...")]}
        async with FakeSerper(results, api_key=KEY) as serper:
            assert await google_search(KEY, "q", top_k=1, snippet_only=False, endpoint=serper.endpoint, **LOOPBACK_PAGES) == [
                contents("T", paragraph)
            ]
    assert site.fetched["/p"] == 1


async def test_pages_are_fetched_concurrently():
    # Each page answers after a second: fetched one after another, no two would be in flight at once.
    pages = {f"/{i}": Page(f"<p>page {i} {MARKER}</p>".encode(), delay_s=1.0) for i in range(5)}
    async with PageServer(pages) as site:
        results = {"q": [organic(f"T{i}", site.url(f"/{i}"), MARKER) for i in range(5)]}
        async with FakeSerper(results, api_key=KEY) as serper:
            result = await google_search(KEY, "q", top_k=5, snippet_only=False, endpoint=serper.endpoint, **LOOPBACK_PAGES)
        assert site.most_in_flight == 5
    assert result == [contents(f"T{i}", f"page {i} {MARKER}") for i in range(5)]


async def test_failing_pages_fall_back_to_the_snippet_and_break_nothing():
    snippet = "this sentence has more than five words in it"
    pages = {
        "/ok": html_page("ok", ["other", f"Start. {snippet}. End.", "more"], "utf-8"),
        "/404": Page(b"gone", status=404),
        "/slow": Page(b"<p>" + snippet.encode() + b"</p>", delay_s=1.0),
        "/binary": Page(b"%PDF-1.4 " + snippet.encode(), content_type="application/pdf"),
        "/huge": Page(b"<p>" + b"x" * 200_000 + snippet.encode() + b"</p>"),
    }
    async with PageServer(pages) as site:
        links = ["/ok", "/404", "/slow", "/binary", "/huge"]
        results = {"q": [organic(path, site.url(path), snippet) for path in links] + [organic("dead", "http://127.0.0.1:9/", snippet)]}
        async with FakeSerper(results, api_key=KEY) as serper:
            started = time.monotonic()
            result = await google_search(
                KEY, "q", top_k=6, snippet_only=False, endpoint=serper.endpoint, page_timeout=0.3, page_max_bytes=100_000,
                **LOOPBACK_PAGES,
            )
            assert time.monotonic() - started < 0.9
    assert result == [contents("/ok", f"Start. {snippet}. End.")] + [contents(t, snippet) for t in links[1:] + ["dead"]]


def test_collect_context_keeps_each_matching_paragraph_once():
    page = "Title\nFirst paragraph says alpha beta gamma delta epsilon zeta.\nUnrelated.\nSecond: one two three four five six seven."
    snippet = "alpha beta gamma delta epsilon zeta ... one two three four five six ... alpha beta gamma delta epsilon zeta ... too short"
    assert collect_context(snippet, page) == (
        "First paragraph says alpha beta gamma delta epsilon zeta.\nSecond: one two three four five six seven."
    )


def test_html_to_text_keeps_visible_paragraphs_only():
    page = "<html><head><title>T</title><style>p{}</style><script>x=1</script></head><body><div>a &amp; b<br>c</div><p>  d   e </p></body></html>"
    assert html_to_text(page) == "T\na & b\nc\nd e"


async def serve_one_result(site_url: str, snippet: str, **settings) -> list[dict]:
    async with FakeSerper({"q": [organic("T", site_url, snippet)]}, api_key=KEY) as serper:
        return await google_search(KEY, "q", top_k=1, snippet_only=False, endpoint=serper.endpoint, **settings)


async def test_by_default_pages_on_loopback_are_not_fetched():
    async with PageServer({"/p": Page(f"<p>Start. {MARKER}. End.</p>".encode())}) as site:
        for link in (site.url("/p"), f"http://localhost:{site.port}/p"):  # an address, and a name resolving to one
            assert await serve_one_result(link, MARKER) == [contents("T", MARKER)]  # the snippet, not the page
    assert site.fetched["/p"] == 0


async def test_a_name_that_passed_the_check_is_still_not_connected_to_a_private_address(monkeypatch):
    # DNS rebinding: the check resolved the name to a public address, the connection resolves it
    # again and gets loopback. Stood in for by a check that passes: the session's resolver must refuse.
    async def passes(host: str, port: int | None) -> None:
        return None

    monkeypatch.setattr(google_search_server, "host_problem", passes)
    async with PageServer({"/p": Page(f"<p>Start. {MARKER}. End.</p>".encode())}) as site:
        assert await serve_one_result(f"http://localhost:{site.port}/p", MARKER) == [contents("T", MARKER)]
        assert site.fetched["/p"] == 0
        # The same page is read where private pages are allowed: the refusal above was the resolver's.
        assert await serve_one_result(f"http://localhost:{site.port}/p", MARKER, **LOOPBACK_PAGES) == [
            contents("T", f"Start. {MARKER}. End.")]


async def test_a_redirect_from_an_allowed_host_to_a_private_one_is_not_followed(monkeypatch):
    # Stand-ins for a public site (127.0.0.2, allowed here) redirecting to a private one: a name
    # that resolves to loopback, or loopback itself.
    monkeypatch.setattr(public_web, "address_allowed", lambda address: address == "127.0.0.2")
    async with PageServer({"/secret": Page(f"<p>internal {MARKER}</p>".encode())}) as private:
        pages = {
            "/by-name": Page(b"", status=302, location=f"http://localhost:{private.port}/secret"),
            "/by-address": Page(b"", status=301, location=private.url("/secret")),
            "/fine": Page(b"", status=302, location="/page"),  # relative, same allowed host
            "/page": Page(f"<p>public {MARKER}</p>".encode()),
        }
        async with PageServer(pages, host="127.0.0.2") as public:
            for path in ("/by-name", "/by-address"):
                assert await serve_one_result(public.url(path), MARKER) == [contents("T", MARKER)]
            assert await serve_one_result(public.url("/fine"), MARKER) == [contents("T", f"public {MARKER}")]
    assert private.fetched["/secret"] == 0
    assert (public.fetched["/by-name"], public.fetched["/by-address"], public.fetched["/page"]) == (1, 1, 1)


async def test_redirect_loops_stop(monkeypatch):
    async with PageServer({"/loop": Page(b"", status=302, location="/loop")}) as site:
        assert await serve_one_result(site.url("/loop"), MARKER, **LOOPBACK_PAGES) == [contents("T", MARKER)]
    assert site.fetched["/loop"] == 6  # the link and five redirects


async def test_pages_are_decoded_and_parsed_off_the_event_loop(monkeypatch):
    on_loop = []

    def spy(real):
        def run(*args):
            try:
                asyncio.get_running_loop()
                on_loop.append(True)
            except RuntimeError:  # no loop runs in this thread
                on_loop.append(False)
            return real(*args)

        return run

    monkeypatch.setattr(google_search_server, "decode_page", spy(google_search_server.decode_page))
    monkeypatch.setattr(google_search_server, "html_to_text", spy(google_search_server.html_to_text))
    page = html_page("t", [f"{ZH} {MARKER}."], "gbk")
    async with PageServer({"/p": page}) as site:
        assert await serve_one_result(site.url("/p"), MARKER, **LOOPBACK_PAGES) == [contents("T", f"{ZH} {MARKER}.")]
    assert on_loop == [False, False]


@pytest.fixture
def stuck_parsing(monkeypatch):
    """Parsing a page whose HTML says "stuck" takes until the test ends (far past any deadline)."""
    release, started = threading.Event(), threading.Event()
    real = google_search_server._text_of

    def parse(raw: bytes, charset: str | None) -> str:
        if b"stuck" in raw:
            started.set()
            release.wait(30)
        return real(raw, charset)

    monkeypatch.setattr(google_search_server, "_text_of", parse)
    yield started
    release.set()


async def test_searches_whose_pages_cannot_be_parsed_in_time_return_their_snippets_by_the_deadline(stuck_parsing):
    pages = {f"/{s}/{p}": Page(f"<p>stuck page {s}.{p} {MARKER}</p>".encode()) for s in range(4) for p in range(3)}
    async with PageServer(pages) as site:
        results = {f"q{s}": [organic(f"T{p}", site.url(f"/{s}/{p}"), f"{s}.{p} {MARKER}") for p in range(3)] for s in range(4)}
        async with FakeSerper(results, api_key=KEY) as serper:
            searches = (google_search(KEY, f"q{s}", top_k=3, timeout=1, snippet_only=False, endpoint=serper.endpoint,
                                      **LOOPBACK_PAGES) for s in range(4))
            # Generous: each search's deadline is 1 s; without one on parsing they never return.
            answers = await asyncio.wait_for(asyncio.gather(*searches), 5)
    assert answers == [[contents(f"T{p}", f"{s}.{p} {MARKER}") for p in range(3)] for s in range(4)]
    assert sum(site.fetched.values()) == 12


async def test_a_page_stuck_in_parsing_does_not_hold_back_the_pages_of_other_searches(stuck_parsing):
    pages = {"/stuck": Page(f"<p>stuck {MARKER}</p>".encode()), "/fine": Page(f"<p>fine {MARKER}</p>".encode())}
    async with PageServer(pages) as site:
        results = {"a": [organic("A", site.url("/stuck"), MARKER)], "b": [organic("B", site.url("/fine"), MARKER)]}
        async with FakeSerper(results, api_key=KEY) as serper:
            search = {"top_k": 1, "timeout": 3, "snippet_only": False, "endpoint": serper.endpoint, **LOOPBACK_PAGES}
            first = asyncio.ensure_future(google_search(KEY, "a", **search))
            while not stuck_parsing.is_set():  # its page is being parsed
                await asyncio.sleep(0.01)
            assert await google_search(KEY, "b", **search) == [contents("B", f"fine {MARKER}")]  # parsed meanwhile
            assert await first == [contents("A", MARKER)]


def test_the_page_parsing_thread_ends_with_its_event_loop():
    """A loop that ends (asyncio.run, as in slime's fully async worker thread) leaves no parsing thread behind."""

    async def read_a_page_then_end():
        page = html_page("t", [f"{ZH} {MARKER}."], "utf-8")
        async with PageServer({"/p": page}) as site:
            assert await serve_one_result(site.url("/p"), MARKER, **LOOPBACK_PAGES) == [contents("T", f"{ZH} {MARKER}.")]
        return [thread for thread in threading.enumerate() if thread.name.startswith("page-parser")]

    before = set(threading.enumerate())
    (parser,) = [thread for thread in asyncio.run(read_a_page_then_end()) if thread not in before]
    parser.join(timeout=30)  # it has been told to stop: it ends at once (without the fix it never does)
    assert not parser.is_alive()


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.215.14", True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False), ("::1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
        ("169.254.169.254", False),  # AWS, GCP, Azure metadata
        ("100.100.100.200", False),  # Alibaba Cloud metadata (shared address space)
        ("fd00:ec2::254", False),  # AWS metadata over IPv6 (unique local)
        ("fe80::1%eth0", False), ("::ffff:127.0.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("not an ip", False),
        # NAT64 (64:ff9b::/96): judged by the IPv4 address it carries; DNS64 maps public sites into it.
        ("64:ff9b::8.8.8.8", True), ("64:ff9b::10.0.0.1", False), ("64:ff9b::7f00:1", False),
        ("64:ff9b::169.254.169.254", False), ("64:ff9b::100.100.100.200", False),
        ("64:ff9b:1::a00:1", False),  # local-use NAT64 (RFC 8215): the operator's own network
        # 6to4 (2002::/16) and Teredo (2001::/32) tunnels carry IPv4 addresses: never fetched.
        ("2002:a00:1::", False), ("2002:7f00:1::1", False), ("2002:a9fe:a9fe::", False), ("2002:808:808::", False),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo, client 10.0.0.1
        ("::10.0.0.1", False), ("::8.8.8.8", False),  # IPv4-compatible (deprecated): not global unicast
        ("100::1", False),  # discard-only
    ],
)
def test_only_global_unicast_addresses_are_allowed(address, allowed):
    assert public_web.address_allowed(address) is allowed


async def test_the_public_only_resolver_gives_no_private_address():
    resolver = public_web.PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="localhost has no public address"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


async def test_a_blank_query_fails_at_once_and_is_not_paid_for(serper):
    with pytest.raises(RequestFailed, match="empty or blank; it was not sent"):
        await google_search(KEY, " \t", snippet_only=True, endpoint=serper.endpoint)
    assert serper.requests == []
