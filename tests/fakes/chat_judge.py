"""A stand-in for a judge model behind OpenAI's ``POST /v1/chat/completions`` (as SGLang serves it).

It reads the numbered items of the plugin's judge prompt and answers ``<n>: correct`` when the
predicted answer, lower-cased, is a gold answer or one of ``aliases[gold]``, else ``<n>: incorrect``,
one line per item, in OpenAI's response shape. A body that is not a chat request (``model``,
``messages`` of role/content, numeric ``temperature`` and ``max_tokens``) gets a 400 saying why;
a request without ``Authorization: Bearer <api_key>`` (when ``api_key`` is set) a 401.
``requests`` records ``(headers, body)`` in arrival order. ``faults`` is a queue served before
normal answers: an int status, a ``(status, text, headers)`` tuple, ``"hang"`` (waits on
``release``, an event the test sets), or ``("reply", text)`` (that text as the model's reply).
``received`` is set on every request.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

_ITEM = re.compile(r"Item (\d+)\nQuestion: (.*?)\nGold answers: (.*?)\nPredicted answer: (.*?)(?:\n\n|$)", re.DOTALL)


class FakeJudge(LoopbackServer):
    def __init__(self, aliases: dict[str, list[str]] | None = None, *, api_key: str | None = None):
        self.aliases = aliases or {}
        self.api_key = api_key
        self.requests: list[tuple[dict, dict]] = []
        self.faults: deque = deque()
        self.received = asyncio.Event()
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        super().__init__(app)

    @property
    def endpoint(self) -> str:
        return self.url("/v1/chat/completions")

    def items(self, index: int) -> list[tuple[str, list[str], str]]:
        """The (question, gold answers, answer) items of request ``index``, as the stand-in read them."""
        return _items(self.requests[index][1]["messages"][0]["content"])

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        self.received.set()
        if self.faults:
            fault = self.faults.popleft()
            if fault == "hang":
                await self.release.wait()
            elif isinstance(fault, tuple) and fault[0] == "reply":
                return web.json_response(_completion(fault[1]))
            else:
                status, text, headers = fault if isinstance(fault, tuple) else (fault, f"injected {fault}", None)
                return web.Response(status=status, text=text, headers=headers)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Invalid API key", "code": 401}}, status=401)
        problem = _protocol_problem(body)
        if problem:
            return web.json_response({"error": {"message": problem, "code": 400}}, status=400)
        items = _items(body["messages"][0]["content"])
        if not items:
            return web.Response(status=500, text="stand-in found no items in the prompt")
        lines = [f"{i}: {'correct' if self._right(golds, answer) else 'incorrect'}" for i, (_, golds, answer) in enumerate(items, 1)]
        return web.json_response(_completion("\n".join(lines)))

    def _right(self, golds: list[str], answer: str) -> bool:
        accepted = {g.lower() for g in golds} | {a.lower() for g in golds for a in self.aliases.get(g, [])}
        return answer.strip().lower() in accepted


def _items(prompt: str) -> list[tuple[str, list[str], str]]:
    return [(q, g.split(" | "), a) for _, q, g, a in _ITEM.findall(prompt)]


def _completion(text: str) -> dict:
    return {
        "id": "chatcmpl-stand-in",
        "object": "chat.completion",
        "model": "judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _protocol_problem(body: object) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return f"body must have a string 'model'; got {body!r}"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and set(m) == {"role", "content"} and isinstance(m["content"], str) for m in messages
    ):
        return f"'messages' must be a non-empty list of {{role, content}}; got {messages!r}"
    for key in ("temperature", "max_tokens"):
        if key in body and not isinstance(body[key], (int, float)):
            return f"{key} must be a number; got {body[key]!r}"
    return None
