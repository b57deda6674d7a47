"""A stand-in for serper.dev's ``POST /search`` (docs/protocols.md, "serper.dev"), strict about the protocol.

``results`` maps a query to its ``organic`` items (``title``, ``link``, ``snippet``). A request
without the right ``X-API-KEY`` gets a 403, a body other than exactly ``{"q", "num", "gl": "us",
"hl": "en"}`` gets a 400 that says what is wrong, an unknown query a 500: a test never mistakes
a wrong call for an empty result. ``requests`` records ``(headers, body)`` in arrival order.
``failures`` is a queue of faults served before normal answers: an int status, a
``(status, text, headers)`` tuple, or ``"hang"`` (answers only after ``hang_s``).
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiohttp import web

from tests.fakes.loopback import LoopbackServer


def organic(title: str, link: str, snippet: str) -> dict:
    return {"title": title, "link": link, "snippet": snippet}


class FakeSerper(LoopbackServer):
    def __init__(self, results: dict[str, list[dict]], *, api_key: str, hang_s: float = 1.5):
        self.results = results
        self.api_key = api_key
        self.requests: list[tuple[dict, dict]] = []
        self.failures: deque = deque()
        self.hang_s = hang_s
        app = web.Application()
        app.router.add_post("/search", self._search)
        super().__init__(app)

    @property
    def endpoint(self) -> str:
        return self.url("/search")

    async def _search(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        if self.failures:
            fault = self.failures.popleft()
            if fault == "hang":
                await asyncio.sleep(self.hang_s)
            else:
                status, text, headers = fault if isinstance(fault, tuple) else (fault, f"injected {fault}", None)
                return web.Response(status=status, text=text, headers=headers)
        if request.headers.get("X-API-KEY") != self.api_key:
            return web.json_response({"message": "Unauthorized.", "statusCode": 403}, status=403)
        problem = _protocol_problem(body)
        if problem:
            return web.json_response({"message": problem, "statusCode": 400}, status=400)
        if body["q"] not in self.results:
            return web.Response(status=500, text=f"stand-in has no results for query {body['q']!r}")
        return web.json_response({"searchParameters": body, "organic": self.results[body["q"]][: body["num"]]})


def _protocol_problem(body: object) -> str | None:
    if not isinstance(body, dict) or set(body) != {"q", "num", "gl", "hl"}:
        return f"body must have exactly the keys q, num, gl, hl; got {body!r}"
    if not isinstance(body["q"], str) or not isinstance(body["num"], int) or body["num"] < 1:
        return f"q must be a string and num a positive int; got {body!r}"
    if (body["gl"], body["hl"]) != ("us", "en"):
        return f"gl/hl must be us/en; got {body['gl']}/{body['hl']}"
    return None
