"""A stand-in for Search-R1's retrieval server: ``POST /retrieve`` as docs/protocols.md describes it.

``corpus`` maps a query to its documents (``{"id", "contents"}`` dicts, best first); an unknown
query gets a 500, so a test never mistakes a wrong query for an empty result. ``requests`` records
every request body in arrival order. ``failures`` is a queue of faults served before normal
answers: an int status (e.g. 503 or 429), a ``(status, headers)`` pair (e.g. a 503 with
``Retry-After``), ``"hang"`` (never answers in time) or ``"drop"`` (closes the connection without
a response). ``loading_until`` (a ``time.monotonic()`` value): until then every request gets 503
with ``Retry-After: retry_after`` and nothing else, as a server loading its index does.
``api_key``: requests without ``Authorization: Bearer <api_key>`` get 401, as the real server
started with ``--api_key`` answers. ``stop()``/``start()`` take it down and up on the same port.
``fingerprint``: sent on every answer, as our server names what answered (None: left out, as
upstream's server does). ``request_cost_s`` + ``query_cost_s`` per query is the compute a request costs; like a real
retriever (one encoder, one index) requests are served one at a time, so waiting callers queue.
Strict about queries, as a server that validates whole requests is (ours before per-query answers):
a request holding one blank query, or one longer than ``max_query_chars``, is refused whole
with 422, in the shape our server gives (``{"detail": [{"loc": ["queries"], "msg": "... queries[i] ..."}]}``).
Like our server, a ``topk`` above ``max_topk`` gets a 422 about ``topk``, and a body larger than
``max_body_bytes`` a 413 (these refused requests are in ``requests`` too).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from aiohttp import web

from tests.fakes.loopback import LoopbackServer


def doc(doc_id: str, title: str, text: str) -> dict:
    """A wiki-18 style document: contents is the quoted title, a newline, then the text."""
    return {"id": doc_id, "contents": f'"{title}"\n{text}'}


class FakeRetriever(LoopbackServer):
    def __init__(
        self,
        corpus: dict[str, list[dict]],
        *,
        hang_s: float = 5.0,
        request_cost_s: float = 0.0,
        query_cost_s: float = 0.0,
        api_key: str | None = None,
        max_query_chars: int = 4096,
        max_topk: int | None = None,
        max_body_bytes: int | None = None,
        fingerprint: str | None = None,
    ):
        self.corpus = corpus
        self.requests: list[dict] = []
        self.failures: deque = deque()
        self.hang_s = hang_s
        self.request_cost_s = request_cost_s
        self.query_cost_s = query_cost_s
        self.api_key = api_key
        self.max_query_chars = max_query_chars
        self.max_topk = max_topk
        self.max_body_bytes = max_body_bytes
        self.fingerprint = fingerprint
        self.loading_until = 0.0
        self.retry_after = "0.2"
        self.refused: list[dict] = []  # bodies answered 503 (loading) or 401 (no token), not in ``requests``
        self._compute = asyncio.Lock()
        app = web.Application()
        app.router.add_post("/retrieve", self._retrieve)
        super().__init__(app)

    @property
    def search_url(self) -> str:
        return self.url("/retrieve")

    @property
    def queries_received(self) -> list[str]:
        return [q for body in self.requests for q in body["queries"]]

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.refused.append(body)
            return web.json_response({"detail": "missing or wrong bearer token"}, status=401)
        if time.monotonic() < self.loading_until:
            self.refused.append(body)
            return web.json_response({"detail": "the retriever is loading"}, status=503, headers={"Retry-After": self.retry_after})
        self.requests.append(body)
        if self.failures:
            fault = self.failures.popleft()
            if fault == "hang":
                await asyncio.sleep(self.hang_s)
            elif fault == "drop":
                request.transport.close()
                return web.Response()
            elif isinstance(fault, tuple):
                status, headers = fault
                return web.Response(status=status, text=f"injected {status}", headers=headers)
            else:
                return web.Response(status=fault, text=f"injected {fault}")
        size = len(await request.read())
        if self.max_body_bytes is not None and size > self.max_body_bytes:
            return web.json_response({"detail": f"the request body is {size} bytes; this server takes at most "
                                                f"{self.max_body_bytes} (--max_body_bytes)"}, status=413)
        if self.max_topk is not None and body.get("topk", 3) > self.max_topk:
            detail = {"type": "less_than_equal", "loc": ["topk"], "msg": f"Input should be less than or equal to {self.max_topk}"}
            return web.json_response({"detail": [detail]}, status=422)
        invalid = [i for i, q in enumerate(body["queries"]) if not q.strip() or len(q) > self.max_query_chars]
        if invalid:
            detail = {"type": "value_error", "loc": ["queries"], "msg": f"Value error, queries{invalid} are blank or too long"}
            return web.json_response({"detail": [detail]}, status=422)
        missing = [q for q in body["queries"] if q not in self.corpus]
        if missing:
            return web.Response(status=500, text=f"stand-in has no documents for queries {missing!r}")
        cost = self.request_cost_s + self.query_cost_s * len(body["queries"])
        if cost > 0:
            async with self._compute:
                await asyncio.sleep(cost)
        topk = body.get("topk", 3)
        results = []
        for query in body["queries"]:
            docs = self.corpus[query][:topk]
            if body.get("return_scores", False):
                results.append([{"document": d, "score": 1.0 - i / 10} for i, d in enumerate(docs)])
            else:
                results.append(docs)
        return web.json_response({"result": results, **({} if self.fingerprint is None else {"fingerprint": self.fingerprint})})
