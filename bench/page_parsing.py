"""Benchmark: how long the event loop stalls while the Google backend reads result pages.

Every trajectory of a rollout worker shares one event loop, so CPU work on it (chardet guessing a
page's encoding, the HTML parser) stalls all of them. Load: ``--pages`` pages of about
``--kb`` KB each (Chinese text in GBK, charset not declared, so chardet has to guess, as on many
real pages), served on loopback and read by ``google_search(snippet_only=False)`` for one result
list, ``--rounds`` times. Meanwhile a ticker wakes every 5 ms and records how late it wakes.

* ``on the loop``: the same code with the parsing run inline (what the client did before);
* ``a thread per page``: parsing in the default executor, one thread per page at once;
* ``ours``: parsing in the backend's one parsing thread.

Prints the worst and median stall of each, side by side; exits 1 unless ours keeps the worst
stall under ``--max-stall-ms`` while the answers are identical.

Run from the repository root:  python bench/page_parsing.py
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import google_search_server  # noqa: E402
from search_r1_slime.http_client import close_shared_session  # noqa: E402
from tests.fakes.pages import PageServer, html_page  # noqa: E402
from tests.fakes.serper import FakeSerper, organic  # noqa: E402

KEY = "bench-key"
SENTENCE = "北京是中华人民共和国的首都，也是全国的政治、文化和国际交往中心，有三千多年的建城史。"
MARKER = "and this sentence carries the answer we want"


async def _ticker(stalls: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        due = time.monotonic() + 0.005
        await asyncio.sleep(0.005)
        stalls.append(max(0.0, time.monotonic() - due))


async def _run(pages: int, kb: int, rounds: int) -> tuple[list[float], list[dict]]:
    paragraphs = [SENTENCE * 4 for _ in range(kb * 1024 // (len(SENTENCE.encode("gbk")) * 4))] + [f"{SENTENCE} {MARKER}."]
    page = html_page("t", paragraphs, "gbk")
    async with PageServer({f"/{i}": page for i in range(pages)}) as site:
        results = {"q": [organic(f"T{i}", site.url(f"/{i}"), MARKER) for i in range(pages)]}
        async with FakeSerper(results, api_key=KEY) as serper:
            stalls: list[float] = []
            stop = asyncio.Event()
            ticker = asyncio.ensure_future(_ticker(stalls, stop))
            answers = []
            for _ in range(rounds):
                answers = await google_search_server.google_search(
                    KEY, "q", top_k=pages, snippet_only=False, endpoint=serper.endpoint, cache=False,
                    allow_private_pages=True, page_timeout=30, timeout=60,
                )
            stop.set()
            await ticker
    await close_shared_session()
    return stalls, answers


class _Inline(concurrent.futures.Executor):
    def submit(self, function, *args, **kwargs):
        future = concurrent.futures.Future()
        future.set_result(function(*args, **kwargs))
        return future


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--kb", type=int, default=780)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-stall-ms", type=float, default=100.0)
    args = parser.parse_args()

    parser = google_search_server._PARSER
    runs = {}
    for name, executor in (("on the loop", _Inline()), ("a thread per page", None), ("ours", parser)):
        google_search_server._PARSER = executor  # None: asyncio's default executor
        try:
            runs[name] = asyncio.run(_run(args.pages, args.kb, args.rounds))
        finally:
            google_search_server._PARSER = parser
    ours, our_answers = runs["ours"]

    print(f"{args.pages} pages of ~{args.kb} KB (GBK, charset undeclared), {args.rounds} rounds; event-loop stall:")
    print(f"{'':20}{'worst ms':>10}{'median ms':>11}")
    for name, (stalls, _) in runs.items():
        print(f"{name:20}{max(stalls) * 1000:10.1f}{statistics.median(stalls) * 1000:11.2f}")
    same = all(answers == our_answers for _, answers in runs.values()) and all(MARKER in a["document"]["contents"] for a in our_answers)
    ok = same and max(ours) * 1000 < args.max_stall_ms
    print(f"answers identical and from the pages: {same}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
