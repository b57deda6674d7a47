"""Benchmark: prefix tokens the engines re-read per trajectory, with and without slime's routing key.

Two stand-in SGLang engines sit behind a stand-in router with a consistent-hashing policy: a
request with ``X-SMG-Routing-Key`` goes to the engine its key hashes to on a ring (64 virtual
nodes per engine); a request without one goes to an engine drawn at random (seeded), as nothing
ties it to its trajectory. Each engine models SGLang's radix cache, unbounded (the best case for
the run without keys): a request's cached tokens are the longest prefix of its ``input_ids``
that the engine has seen, and everything else is prefilled.

Load: ``--groups`` GRPO groups of ``--samples`` samples, all concurrent, each trajectory run by
the plugin's real ``generate`` (search, search again, answer: three ``/generate`` calls) with a
retrieval stand-in. Every sample carries a session id, as slime's ``generate_and_rm_group`` gives
it; the run with ``router_policy=consistent_hashing`` sends it as the key, the run without does not.

Tokens are bytes: a byte-level tokenizer without merges stands in for the model's, so counts do
not depend on a vocabulary (an observation is capped at 2000 bytes, about Search-R1's 500 tokens).
Re-read bytes of a call: the part of its input some engine already computed (up to the previous
call's output, or the group's prompt for a first call) that the engine serving it has not cached.
Printed per engine and for both, divided by the number of trajectories, with the bytes prefilled.

Target (PASS, else FAIL): with the key, no call re-reads anything and each engine serves at least a quarter of
the trajectories; the run without the key is printed beside it as the baseline.

Run from the repository root:  python bench/routing_prefix.py
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import enum
import hashlib
import random
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from aiohttp import web
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generate_with_search import INFORMATION_TAIL, generate  # noqa: E402
from search_r1_slime.http_client import close_shared_session  # noqa: E402
from search_r1_slime.prepare_data import make_prompt  # noqa: E402

ROUTING_KEY = "X-SMG-Routing-Key"


@dataclass
class Sample:
    """The fields of slime's Sample the plugin uses, with the session id slime's
    ``generate_and_rm_group`` sets (2026-04 and later)."""

    class Status(enum.Enum):
        PENDING, COMPLETED, TRUNCATED, ABORTED = "pending", "completed", "truncated", "aborted"

    prompt: str = ""
    label: dict | None = None
    session_id: str | None = None
    tokens: list[int] = field(default_factory=list)
    response: str = ""
    response_length: int = 0
    loss_mask: list[int] | None = None
    rollout_log_probs: list[float] | None = None
    status: Status = Status.PENDING
    metadata: dict = field(default_factory=dict)


def save_byte_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges (one token per byte), saved as a checkpoint's is:
    token counts below are then bytes of text, whatever a model's vocabulary would make of them."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    model = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(sorted(alphabet))}, merges=[]))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model)
    tokenizer.save_pretrained(path)
    return tokenizer


class Server:
    """An aiohttp application on a free loopback port."""

    def __init__(self, app: web.Application):
        self.runner = web.AppRunner(app)
        self.port: int | None = None

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self.runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def retriever(corpus: dict[str, list[str]]) -> Server:
    """The retrieval server's ``/retrieve``: each query's passages ("title\ntext"), as documents."""

    async def retrieve(request: web.Request) -> web.Response:
        body = await request.json()
        found = [[{"id": str(i), "contents": text} for i, text in enumerate(corpus[q][: body["topk"]])] for q in body["queries"]]
        return web.json_response({"result": found})

    app = web.Application()
    app.router.add_post("/retrieve", retrieve)
    return Server(app)


class Trie:
    """Token sequences seen, as SGLang's radix cache holds them (unbounded)."""

    def __init__(self):
        self.root: dict = {}

    def match(self, ids: list[int]) -> int:
        node, depth = self.root, 0
        for token in ids:
            if token not in node:
                break
            node, depth = node[token], depth + 1
        return depth

    def insert(self, ids: list[int]) -> None:
        node = self.root
        for token in ids:
            node = node.setdefault(token, {})


class Engine(Server):
    """A stand-in SGLang engine: writes each trajectory's scripted turns, counts what it re-reads.

    ``computed`` is shared by all engines: every sequence any engine has computed. A call re-reads
    the part of its input that some engine computed before but this engine has not cached. The
    first turn's text varies at random (seeded), so samples of a group diverge after the prompt as
    sampled ones do; a call's turn is the number of observations in its input.
    """

    def __init__(self, tokenizer, computed: Trie, seed: int):
        self.tokenizer = tokenizer
        self.cache, self.computed = Trie(), computed
        self.random = random.Random(seed)
        self.calls = self.prefilled = 0
        self.prompt_rereads = self.turn_rereads = 0
        app = web.Application()
        app.router.add_post("/generate", self.handle)
        super().__init__(app)

    def turn_text(self, question: int, turn: int) -> str:
        if turn == 0:
            draft = self.random.randrange(10**6)
            return f"<think> I need facts for question {question}, draft {draft}. </think>\n<search> question {question} </search>"
        if turn == 1:
            return f"<think> Not enough yet. </think>\n<search> question {question} details </search>"
        return f"<think> Now I know. </think>\n<answer> answer {question} </answer>"

    async def handle(self, request: web.Request) -> web.Response:
        ids = (await request.json())["input_ids"]
        text = self.tokenizer.decode(ids)
        question = int(text.split("Question: question ", 1)[1].split("?", 1)[0])
        turn = text.count(INFORMATION_TAIL)  # the prompt names the tag too, never with this tail
        cached, known = self.cache.match(ids), self.computed.match(ids)
        reread = max(0, known - cached)
        if turn == 0:
            self.prompt_rereads += reread
        else:
            self.turn_rereads += reread
        self.calls += 1
        self.prefilled += len(ids) - cached
        out = list(self.tokenizer(self.turn_text(question, turn), add_special_tokens=False)["input_ids"])
        for trie in (self.cache, self.computed):
            trie.insert(ids + out)
        meta = {
            "finish_reason": {"type": "stop", "matched": "</answer>" if turn == 2 else "</search>"},
            "prompt_tokens": len(ids),
            "cached_tokens": cached,
            "completion_tokens": len(out),
            "output_token_logprobs": [[-0.1, token, None] for token in out],
        }
        return web.json_response({"text": self.tokenizer.decode(out), "meta_info": meta})


class Router(Server):
    """Consistent hashing: a key picks the engine on a hash ring; without one, a random engine."""

    def __init__(self, engines: list[Engine], seed: int):
        self.engines = engines
        self.random = random.Random(seed)
        self.ring = sorted((self._hash(f"engine-{i}-{v}"), i) for i in range(len(engines)) for v in range(64))
        self.session: aiohttp.ClientSession | None = None
        self.keys: dict[str, int] = {}  # key -> the engine it went to
        app = web.Application()
        app.router.add_post("/generate", self.handle)
        super().__init__(app)

    @staticmethod
    def _hash(value: str) -> int:
        return int.from_bytes(hashlib.sha1(value.encode()).digest()[:8], "big")

    def pick(self, key: str | None) -> int:
        if key is None:
            return self.random.randrange(len(self.engines))
        at = bisect.bisect(self.ring, (self._hash(key), len(self.engines))) % len(self.ring)
        return self.ring[at][1]

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers.get(ROUTING_KEY)
        index = self.pick(key)
        if key is not None:
            self.keys[key] = index
        if self.session is None:
            self.session = aiohttp.ClientSession()
        async with self.session.post(self.engines[index].url("/generate"), data=await request.read()) as answer:
            return web.Response(body=await answer.read(), status=answer.status, content_type="application/json")


async def run(args: argparse.Namespace, tokenizer_dir: str, tokenizer, with_key: bool) -> tuple[list[Engine], Router]:
    """All trajectories through the plugin's generate, the router and two engines."""
    computed = Trie()
    engines = [Engine(tokenizer, computed, seed=args.seed + i) for i in range(2)]
    router = Router(engines, seed=args.seed)
    # Three passages per search, of about a hundred words each (Wikipedia passages in Search-R1).
    passage = " ".join(["William Shakespeare wrote the play Hamlet in about 1600."] * 10)
    corpus = {
        query: [f"Topic {q}.{d}\n{passage}" for d in range(3)]
        for q in range(args.groups)
        for query in (f"question {q}", f"question {q} details")
    }
    search = retriever(corpus)
    servers = [*engines, router, search]
    for server in servers:
        await server.start()
    plugin_args = SimpleNamespace(
        sglang_router_ip="127.0.0.1", sglang_router_port=router.port, hf_checkpoint=tokenizer_dir,
        rollout_max_response_len=16384, partial_rollout=False,
        router_policy="consistent_hashing" if with_key else None,
        # Search-R1's 500-token cap on an observation, in bytes (about four to a token).
        search_r1={"local": {"search_url": search.url("/retrieve")}, "max_obs_tokens": 2000},
    )

    ids = random.Random(args.seed)

    async def trajectory(group: int) -> None:
        # Search-R1's prompt in Qwen2.5's chat format, as slime's --apply-chat-template renders it.
        prompt = f"<|im_start|>user\n{make_prompt(f'question {group}?')}<|im_end|>\n<|im_start|>assistant\n"
        # Every sample has its session id, as slime's generate_and_rm_group gives it (seeded here).
        session_id = str(uuid.UUID(int=ids.getrandbits(128), version=4))
        sample = Sample(prompt=prompt, label={"ground_truth": {"target": [f"answer {group}"]}}, session_id=session_id)
        await generate(plugin_args, sample, {"max_new_tokens": 16384, "temperature": 1.0})
        if not sample.response.endswith(f"<answer> answer {group} </answer>"):
            raise RuntimeError(f"trajectory of question {group} did not finish: {sample.response[-120:]!r}")

    try:
        await asyncio.gather(*(trajectory(g) for g in range(args.groups) for _ in range(args.samples)))
    finally:
        await close_shared_session()
        if router.session is not None:
            await router.session.close()
        for server in servers:
            await server.stop()
    return engines, router


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=16, help="GRPO groups (distinct prompts)")
    parser.add_argument("--samples", type=int, default=4, help="samples per group")
    parser.add_argument("--seed", type=int, default=0, help="seed of the session ids, the drafts and the router's pick without a key")
    args = parser.parse_args()
    trajectories = args.groups * args.samples
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        tokenizer = save_byte_tokenizer(tokenizer_dir)
        results = {with_key: asyncio.run(run(args, tokenizer_dir, tokenizer, with_key)) for with_key in (True, False)}

    print(f"{trajectories} trajectories ({args.groups} groups x {args.samples}), 3 calls each, 2 engines; bytes per trajectory")
    print("re-read: of the trajectory's earlier turns | of its group's prompt")
    print(f"{'':10}{'with routing key':>30}{'without (today)':>30}")
    rows = [(f"engine {i}", [[results[k][0][i]] for k in (True, False)]) for i in range(2)]
    rows.append(("both", [results[k][0] for k in (True, False)]))
    for name, per_run in rows:
        cells = [
            f"{sum(e.turn_rereads for e in engines) / trajectories:8.1f} | {sum(e.prompt_rereads for e in engines) / trajectories:6.1f}"
            for engines in per_run
        ]
        print(f"{name:10}{cells[0]:>30}{cells[1]:>30}")
    prefilled = [sum(e.prefilled for e in results[k][0]) / trajectories for k in (True, False)]
    calls = [" / ".join(str(e.calls) for e in results[k][0]) for k in (True, False)]
    print(f"{'prefilled':10}{prefilled[0]:>30.1f}{prefilled[1]:>30.1f}")
    print(f"{'calls':10}{calls[0]:>30}{calls[1]:>30}")

    keyed, _ = results[True]
    spread = [sum(1 for engine in results[True][1].keys.values() if engine == i) for i in range(2)]
    no_rereads = all(engine.turn_rereads == 0 for engine in keyed)
    balanced = min(spread) >= trajectories / 4
    print(f"target: with the key no trajectory re-reads its earlier turns ({'met' if no_rereads else 'NOT met'}), "
          f"and each engine serves >= 1/4 of the trajectories ({spread[0]} / {spread[1]}: {'met' if balanced else 'NOT met'})")
    print("PASS" if no_rereads and balanced else "FAIL")
    return 0 if no_rereads and balanced else 1


if __name__ == "__main__":
    sys.exit(main())
