"""Web pages for the Google backend's page fetching, served on loopback in several encodings.

``pages`` maps a path to a ``Page``: raw bytes (already encoded), a content type, and optional
misbehaviour (a status, a delay before answering, a redirect's ``location``, or ``endless``: the
body is sent again and again, a little at a time, and the answer never ends). ``html_page`` builds an HTML document of
paragraphs in a given encoding; by default the charset is NOT declared in the Content-Type, so
the client has to detect it (as with many real pages). ``fetched`` counts requests per path,
``most_in_flight`` the most requests that were being answered at once.
"""

from __future__ import annotations

import asyncio
import html
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

from tests.fakes.loopback import LoopbackServer


@dataclass(frozen=True)
class Page:
    body: bytes
    content_type: str = "text/html"
    status: int = 200
    delay_s: float = 0.0
    location: str | None = None  # a redirect's target
    endless: bool = False  # stream the body forever


def html_page(title: str, paragraphs: list[str], encoding: str, *, declare_charset: bool = False) -> Page:
    """An HTML page with a script and a style block (which must never show up as text)."""
    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in paragraphs)
    document = (
        f"<html><head><title>{html.escape(title)}</title><style>p {{ margin: 0 }}</style>"
        f"<script>var tracking = 'not text';</script></head>\n<body>\n{body}</body></html>"
    )
    content_type = f"text/html; charset={encoding}" if declare_charset else "text/html"
    return Page(document.encode(encoding), content_type=content_type)


class PageServer(LoopbackServer):
    def __init__(self, pages: dict[str, Page], host: str = "127.0.0.1"):
        self.pages = pages
        self.fetched: Counter[str] = Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        app = web.Application()
        app.router.add_get("/{path:.*}", self._serve)
        super().__init__(app, host)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        self.fetched[path] += 1
        page = self.pages.get(path)
        if page is None:
            return web.Response(status=404, text="no such page")
        if page.delay_s:
            await asyncio.sleep(page.delay_s)
        headers = {"Content-Type": page.content_type, **({"Location": page.location} if page.location else {})}
        if page.endless:
            response = web.StreamResponse(status=page.status, headers=headers)
            await response.prepare(request)
            while True:
                await response.write(page.body)
                await asyncio.sleep(0.05)
        return web.Response(status=page.status, body=page.body, headers=headers)
