"""Benchmark: prefix tokens engines re-read per trajectory, with and without slime's routing key.

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

Re-read tokens of a call: the part of the trajectory some engine already computed (everything up
to the previous call's output) that the engine serving this call has not cached and reads again.
Reported per engine, per trajectory it served (mean over the trajectories whose calls it served).

PASS when, with the key, no call re-reads anything and each engine serves at least a quarter of
the trajectories; the run without the key is printed beside it as the baseline.

Run from the repository root:  python bench/routing_prefix.py
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import random
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generate_with_search import INFORMATION_TAIL, generate  # noqa: E402
from search_r1_slime.http_client import close_shared_session  # noqa: E402
from search_r1_slime.prepare_data import make_prompt  # noqa: E402
from tests.fakes.loopback import LoopbackServer  # noqa: E402
from tests.fakes.retriever import FakeRetriever, doc  # noqa: E402
from tests.fakes.sample import NewSample  # noqa: E402
from tests.fakes.tokenizer import build_qwen_like_tokenizer  # noqa: E402

ROUTING_KEY = "X-SMG-Routing-Key"


@dataclass
class SessionSample(NewSample):
    session_id: str | None = None  # set by slime's generate_and_rm_group (2026-04 and later)


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


class Engine(LoopbackServer):
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


class Router(LoopbackServer):
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
    passage = " ".join(["William Shakespeare wrote the play Hamlet."] * 12)
    corpus = {}
    for q in range(args.groups):
        for query in (f"question {q}", f"question {q} details"):
            corpus[query] = [doc(f"{query}-{d}", f"Topic {q}.{d}", passage) for d in range(3)]
    retriever = FakeRetriever(corpus)
    servers = [*engines, router, retriever]
    for server in servers:
        await server.start()
    plugin_args = SimpleNamespace(
        sglang_router_ip="127.0.0.1", sglang_router_port=router.port, hf_checkpoint=tokenizer_dir,
        rollout_max_response_len=4096, partial_rollout=False,
        router_policy="consistent_hashing" if with_key else None,
        search_r1={"local": {"search_url": retriever.search_url}},
    )

    ids = random.Random(args.seed)

    async def trajectory(group: int) -> None:
        # Search-R1's prompt, rendered by the chat template as slime's --apply-chat-template does.
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": make_prompt(f"question {group}?")}], tokenize=False, add_generation_prompt=True
        )
        # Every sample has its session id, as slime's generate_and_rm_group gives it (seeded here).
        session_id = str(uuid.UUID(int=ids.getrandbits(128), version=4))
        sample = SessionSample(prompt=prompt, label={"ground_truth": {"target": [f"answer {group}"]}}, session_id=session_id)
        await generate(plugin_args, sample, {"max_new_tokens": 4096, "temperature": 1.0})
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
        tokenizer = build_qwen_like_tokenizer(tokenizer_dir)
        results = {with_key: asyncio.run(run(args, tokenizer_dir, tokenizer, with_key)) for with_key in (True, False)}

    print(f"{trajectories} trajectories ({args.groups} groups x {args.samples}), 3 calls each, 2 engines")
    print("tokens re-read per trajectory: earlier turns of the trajectory | its group's prompt; calls served")
    print(f"{'':24}{'with routing key':>34}{'without (today)':>34}")
    for i in range(2):
        cells = []
        for with_key in (True, False):
            engine = results[with_key][0][i]
            cells.append(f"{engine.turn_rereads / trajectories:8.1f} | {engine.prompt_rereads / trajectories:6.1f}; {engine.calls:4d} calls")
        print(f"{'engine ' + str(i):24}{cells[0]:>34}{cells[1]:>34}")
    totals = []
    for with_key in (True, False):
        engines = results[with_key][0]
        turns = sum(e.turn_rereads for e in engines) / trajectories
        prompts = sum(e.prompt_rereads for e in engines) / trajectories
        totals.append(f"{turns:8.1f} | {prompts:6.1f}; {sum(e.prefilled for e in engines) // trajectories:4d} prefilled")
    print(f"{'both':24}{totals[0]:>34}{totals[1]:>34}")

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
