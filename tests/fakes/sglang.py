"""A stand-in for SGLang's native ``POST /generate`` that serves scripted model turns.

It speaks the wire protocol of SGLang's ``GenerateReqInput`` and its response (docs/protocols.md, "SGLang /generate") and
decides when to stop the way ``Req.check_finished`` does, token by token: an abort first, then
``max_new_tokens`` (finish ``length``), then a stop token (``stop_token_ids`` or EOS unless
``ignore_eos``; finish ``stop`` with the token id as ``matched``), then stop strings (finish
``stop`` as soon as the decoded output contains one; ``matched`` is that string). As in SGLang, the
stop token(s) stay in ``output_token_logprobs``; ``text`` keeps the matched stop string only with
``no_stop_trim``, and it may carry characters past the stop string when the last token does.

Newer SGLang's replay outputs for slime: with ``return_routed_experts`` the answer carries
``routed_experts`` (base64 int32, one row of ``num_layers x topk`` expert ids per token of the whole
sequence but the last; ``FakeSGLang.expert(position, layer, k)`` computes each id), and with
``custom_params: {"return_top_p_token_ids": true}`` it carries ``top_p_token_ids`` and
``top_p_token_offsets`` (two kept ids per generated token: the token and ``FakeSGLang.TOP_P_ALT``).
The ``X-SMG-Routing-Key`` header of each request is kept in ``routing_keys`` (None without one).

Each request consumes one ``Turn`` of the script. The text of a turn is what the model *would*
write; the engine cuts it where a stop condition fires. Log-probs are a pure function of the
absolute position in the sequence (``FakeSGLang.logprob(position)``) so tests can assert exact
alignment. Anything unexpected fails loudly: a request whose ``input_ids`` do not start with the
prompt + everything generated so far (HTTP 400 naming the first differing position), a text
prompt, unknown fields, ``return_logprob`` off, a request after the script ended (HTTP 500),
or a scripted turn that runs out before any stop condition (HTTP 500).
"""

from __future__ import annotations

import base64
import itertools
from collections import deque
from dataclasses import dataclass

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

_REQUEST_FIELDS = {"input_ids", "sampling_params", "return_logprob", "rid", "stream", "logprob_start_len", "return_routed_experts"}
_SAMPLING_FIELDS = {
    "max_new_tokens", "min_new_tokens", "stop", "stop_token_ids", "temperature", "top_p", "top_k", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "no_stop_trim", "n", "json_schema", "regex", "ebnf", "custom_params",
    "sampling_seed", "stream_interval", "logit_bias",
}


@dataclass
class Turn:
    """One scripted generation: ``text`` (tokenised with the tokenizer) or exact ``ids``.

    ``eos`` appends the tokenizer's EOS token; ``abort_after`` makes the engine abort after that
    many tokens (as slime's abort of in-flight requests does); ``http_status`` answers the
    (valid) request with that HTTP error instead of generating.
    """

    text: str = ""
    ids: list[int] | None = None
    eos: bool = False
    abort_after: int | None = None
    http_status: int | None = None


class GenerateScriptError(Exception):
    pass


class FakeSGLang(LoopbackServer):
    NUM_LAYERS, TOPK, NUM_EXPERTS = 2, 2, 8  # the MoE shape of the routed experts served
    TOP_P_ALT = 1  # the second token id kept by top-p at every step

    def __init__(self, tokenizer, prompt_ids: list[int], turns: list[Turn], *, weight_version: str = "7"):
        self.tokenizer = tokenizer
        self.turns = deque(turns)
        self.requests: list[dict] = []
        self.routing_keys: list[str | None] = []
        self.failures: deque[int] = deque()  # HTTP statuses served before normal answers
        self.weight_version = weight_version
        self._expected_prefix = list(prompt_ids)
        self._previous_sequence: list[int] = []
        self._rids = itertools.count()
        app = web.Application()
        app.router.add_post("/generate", self.handle_generate)
        super().__init__(app)

    def expect_fresh_start(self, prompt_ids: list[int]) -> None:
        """The next request restarts the trajectory from the bare prompt (a non-partial retry)."""
        self._expected_prefix = list(prompt_ids)

    @staticmethod
    def logprob(position: int) -> float:
        """The log-prob the stand-in reports for a token at absolute ``position`` in the sequence."""
        return -(position + 1) / 1000

    @classmethod
    def expert(cls, position: int, layer: int, k: int) -> int:
        """The expert the stand-in routes the token at absolute ``position`` to, in ``layer``, choice ``k``."""
        return (position + layer * 3 + k) % cls.NUM_EXPERTS

    @classmethod
    def experts(cls, positions: range) -> list[list[list[int]]]:
        return [[[cls.expert(p, layer, k) for k in range(cls.TOPK)] for layer in range(cls.NUM_LAYERS)] for p in positions]

    @property
    def generate_url(self) -> str:
        return self.url("/generate")

    @property
    def script_done(self) -> bool:
        return not self.turns

    async def handle_generate(self, request: web.Request) -> web.Response:
        """The ``/generate`` handler (public so ``FakeSGLangPerPrompt`` can route to it)."""
        body = await request.json()
        self.requests.append(body)
        self.routing_keys.append(request.headers.get("X-SMG-Routing-Key"))
        if self.failures:
            status = self.failures.popleft()
            return web.Response(status=status, text=f"injected {status}")
        try:
            self._validate(body)
        except GenerateScriptError as exc:
            return web.Response(status=400, text=f"fake SGLang: {exc}")
        if not self.turns:
            return web.Response(status=500, text="fake SGLang: request after the script ended")
        turn = self.turns.popleft()
        if turn.http_status is not None:
            return web.Response(status=turn.http_status, text=f"scripted HTTP {turn.http_status}")
        try:
            answer = self._run(body, turn)
        except GenerateScriptError as exc:
            return web.Response(status=500, text=f"fake SGLang: {exc}")
        return web.json_response(answer)

    def _validate(self, body: dict) -> None:
        if "text" in body:
            raise GenerateScriptError("got a text prompt; the plugin must send input_ids")
        unknown = set(body) - _REQUEST_FIELDS
        if unknown:
            raise GenerateScriptError(f"unknown request fields {sorted(unknown)}")
        ids = body.get("input_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
            raise GenerateScriptError(f"input_ids must be a non-empty list of ints, got {ids!r}")
        if body.get("return_logprob") is not True:
            raise GenerateScriptError("return_logprob must be true: token ids come from output_token_logprobs")
        params = body.get("sampling_params")
        if not isinstance(params, dict):
            raise GenerateScriptError("sampling_params missing")
        unknown = set(params) - _SAMPLING_FIELDS
        if unknown:
            raise GenerateScriptError(f"unknown sampling_params {sorted(unknown)}")
        max_new = params.get("max_new_tokens")
        if not isinstance(max_new, int) or max_new < 1:
            raise GenerateScriptError(f"max_new_tokens must be a positive int, got {max_new!r}")
        stop = params.get("stop")
        if stop is not None and not (isinstance(stop, str) or all(isinstance(s, str) for s in stop)):
            raise GenerateScriptError(f"stop must be a string or a list of strings, got {stop!r}")
        expected = self._expected_prefix
        if ids[: len(expected)] != expected:
            first = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
            raise GenerateScriptError(
                f"input_ids are not prompt + response so far: first difference at position {first} "
                f"(got {ids[first:first + 5]}, expected {expected[first:first + 5]}; lengths {len(ids)} vs {len(expected)})"
            )

    def _run(self, body: dict, turn: Turn) -> dict:
        tokenizer = self.tokenizer
        params = body["sampling_params"]
        input_ids = body["input_ids"]
        stops = [params["stop"]] if isinstance(params.get("stop"), str) else list(params.get("stop") or [])
        stop_ids = set(params.get("stop_token_ids") or [])
        if not params.get("ignore_eos", False):
            stop_ids.add(tokenizer.eos_token_id)
        scripted = list(turn.ids) if turn.ids is not None else list(tokenizer(turn.text, add_special_tokens=False)["input_ids"])
        if turn.eos:
            scripted.append(tokenizer.eos_token_id)

        out: list[int] = []
        finish: dict | None = None
        abort = {"type": "abort", "message": "Abort in waiting queue", "status_code": None, "err_type": None}
        if turn.abort_after == 0:
            finish = abort
        for token in scripted if finish is None else []:
            out.append(token)
            if turn.abort_after is not None and len(out) >= turn.abort_after:
                finish = abort  # checked first, as in check_finished: even a stop token is then an abort
                break
            if len(out) >= params["max_new_tokens"]:
                finish = {"type": "length", "length": params["max_new_tokens"]}
                break
            if token in stop_ids:
                finish = {"type": "stop", "matched": token}
                break
            decoded = tokenizer.decode(out)
            matched = next((s for s in stops if s in decoded), None)
            if matched is not None:
                finish = {"type": "stop", "matched": matched}
                break
        if finish is None:
            raise GenerateScriptError(f"scripted turn {turn!r} ended before any stop condition")

        text = tokenizer.decode(out, skip_special_tokens=params.get("skip_special_tokens", True))
        if not params.get("no_stop_trim", False) and finish["type"] == "stop":
            if isinstance(finish["matched"], str):
                text = text[: text.find(finish["matched"])]
            else:
                text = tokenizer.decode(out[:-1], skip_special_tokens=params.get("skip_special_tokens", True))

        start = len(input_ids)
        cached = len(list(itertools.takewhile(lambda pair: pair[0] == pair[1], zip(input_ids, self._previous_sequence))))
        self._previous_sequence = input_ids + out
        self._expected_prefix = input_ids + out
        meta = {
            "id": f"fake-{next(self._rids)}",
            "finish_reason": finish,
            "prompt_tokens": len(input_ids),
            "completion_tokens": len(out),
            "cached_tokens": cached,
            "weight_version": self.weight_version,
            "output_token_logprobs": [[self.logprob(start + i), token, None] for i, token in enumerate(out)],
        }
        if body.get("return_routed_experts"):
            routed = [e for row in self.experts(range(start + len(out) - 1)) for layer in row for e in layer]
            meta["routed_experts"] = base64.b64encode(b"".join(e.to_bytes(4, "little") for e in routed)).decode("ascii")
        if (params.get("custom_params") or {}).get("return_top_p_token_ids"):
            meta["top_p_token_ids"] = [i for token in out for i in (token, self.TOP_P_ALT)]
            meta["top_p_token_offsets"] = list(range(0, 2 * len(out) + 1, 2))
        return {"text": text, "meta_info": meta}


class FakeSGLangPerPrompt(LoopbackServer):
    """One ``FakeSGLang`` script per prompt behind one ``/generate``: a request goes to the script
    whose prompt its ``input_ids`` start with, so concurrent trajectories stay independent."""

    def __init__(self, tokenizer, scripts: dict[str, list[Turn]]):
        self.fakes: dict[str, FakeSGLang] = {}  # prompt -> its script's stand-in
        self._routes: list[tuple[list[int], FakeSGLang]] = []
        for prompt, turns in scripts.items():
            prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            self.fakes[prompt] = FakeSGLang(tokenizer, prompt_ids, turns)
            self._routes.append((prompt_ids, self.fakes[prompt]))
        app = web.Application()
        app.router.add_post("/generate", self._route)
        super().__init__(app)

    async def _route(self, request: web.Request) -> web.Response:
        ids = (await request.json()).get("input_ids") or []
        for prompt_ids, fake in self._routes:
            if ids[: len(prompt_ids)] == prompt_ids:
                return await fake.handle_generate(request)
        return web.Response(status=400, text="fake SGLang: no scripted trajectory starts with these input_ids")


class FakeSGLangGroup(LoopbackServer):
    """The samples of one GRPO group: ``n`` scripts behind one ``/generate``, all on the same prompt.

    A request holding just the prompt starts the next script not yet started (as the group's
    samples arrive, in any order); a later request goes to the started script whose trajectory so
    far it continues. ``fakes`` lists each script's stand-in, in script order."""

    def __init__(self, tokenizer, prompt_ids: list[int], scripts: list[list[Turn]]):
        self.prompt_ids = list(prompt_ids)
        self.fakes = [FakeSGLang(tokenizer, prompt_ids, turns) for turns in scripts]
        self._started: list[FakeSGLang] = []
        app = web.Application()
        app.router.add_post("/generate", self._route)
        super().__init__(app)

    async def _route(self, request: web.Request) -> web.Response:
        ids = (await request.json()).get("input_ids") or []
        for fake in self._started:
            prefix = fake._expected_prefix
            if len(prefix) > len(self.prompt_ids) and ids[: len(prefix)] == prefix:
                return await fake.handle_generate(request)
        if ids == self.prompt_ids and len(self._started) < len(self.fakes):
            fake = self.fakes[len(self._started)]
            self._started.append(fake)
            return await fake.handle_generate(request)
        return web.Response(status=400, text="fake SGLang: no scripted sample of this group continues these input_ids")
