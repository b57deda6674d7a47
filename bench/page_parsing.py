"""Benchmark: how long the event loop stalls while the Google backend reads result pages.

Every trajectory of a rollout worker shares one event loop, so CPU work on it (chardet guessing a
page's encoding, the HTML parser) stalls all of them. Load: ``--pages`` pages of about
``--kb`` KB each (Chinese text in GBK, charset not declared, so chardet has to guess, as on many
real pages), served on loopback and read by ``google_search(snippet_only=False)`` for one result
list, ``--rounds`` times. Meanwhile a ticker wakes every 5 ms and records how late it wakes.

* ``on the loop``: the same code with the parsing run inline (what the client did before);
* ``a thread per page``: parsing in the default executor, one thread per page at once;
* ``ours``: parsing in the backend's small pool of parsing threads (``_PARSER_THREADS``).

Pages and the serper.dev stand-in are served on loopback by this process (one loop).

Prints the worst and median stall of each, side by side, and PASS or FAIL (exit 1) against the
target: the answers are identical and ours keeps the worst stall under a third of the stall parsing
on the loop causes (the ticker also sees the scheduling delays of a busy machine, so an absolute bound would measure the machine).

Run from the repository root:  python -m bench.page_parsing
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import statistics
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import google_search_server  # noqa: E402
from search_r1_slime.http_client import PerLoop, close_shared_session  # noqa: E402

KEY = "bench-key-0123456789"
SENTENCE = "北京是中华人民共和国的首都，也是全国的政治、文化和国际交往中心，有三千多年的建城史。"
MARKER = "and this sentence carries the answer we want"


def _page(kb: int) -> bytes:
    """An HTML page of about ``kb`` KB in GBK, markup and text mixed as on a news or forum page,
    whose last paragraph holds MARKER."""
    item = (
        f'<div class="item"><a href="/wiki/{SENTENCE[:2]}">{SENTENCE[:6]}</a><p>{SENTENCE * 2}</p>'
        '<span class="meta">2020-01-01 · 1234</span></div>\n'
    )
    count = kb * 1024 // len(item.encode("gbk"))
    head = "<html><head><title>t</title><style>p { margin: 0 }</style><script>var x = 1;</script></head><body>"
    return f"{head}{item * count}<p>{SENTENCE} {MARKER}.</p></body></html>".encode("gbk")


async def _serve(pages: int, kb: int) -> tuple[web.AppRunner, str]:
    """Pages ``/0`` ... on loopback (no charset declared), and a serper.dev stand-in at ``/search``
    listing them as the results of any query."""
    body = _page(kb)
    base = ""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    async def search(request: web.Request) -> web.Response:
        return web.json_response({"organic": [{"title": f"T{i}", "link": f"{base}/{i}", "snippet": MARKER} for i in range(pages)]})

    app = web.Application()
    app.router.add_post("/search", search)
    app.router.add_get("/{i}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    return runner, base


async def _ticker(stalls: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        due = time.monotonic() + 0.005
        await asyncio.sleep(0.005)
        stalls.append(max(0.0, time.monotonic() - due))


async def _run(pages: int, kb: int, rounds: int) -> tuple[list[float], list[dict]]:
    runner, base = await _serve(pages, kb)
    stalls: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.ensure_future(_ticker(stalls, stop))
    answers = []
    for _ in range(rounds):
        answers = await google_search_server.google_search(
            KEY, "q", top_k=pages, snippet_only=False, endpoint=f"{base}/search", cache=False,
            allow_private_pages=True, page_timeout=30, timeout=60,
        )
    stop.set()
    await ticker
    await close_shared_session()
    await runner.cleanup()
    return stalls, answers


class _Inline(concurrent.futures.Executor):
    def submit(self, function, *args, **kwargs):
        future = concurrent.futures.Future()
        future.set_result(function(*args, **kwargs))
        return future


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.page_parsing", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--kb", type=int, default=780)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    parsers = google_search_server._PARSERS
    runs = {}
    # None: asyncio's default executor, a thread per page at once.
    for name, executor in (("on the loop", _Inline()), ("a thread per page", None), ("ours", "ours")):
        if executor != "ours":
            google_search_server._PARSERS = PerLoop(lambda executor=executor: executor)
        try:
            runs[name] = asyncio.run(_run(args.pages, args.kb, args.rounds))
        finally:
            google_search_server._PARSERS = parsers
    ours, our_answers = runs["ours"]

    page = _page(args.kb)
    google_search_server._text_of(page, None)  # warm-up: chardet builds its tables on first use
    started = time.process_time()
    google_search_server._text_of(page, None)
    print(f"parsing one page (chardet, decoding, HTML): {(time.process_time() - started) * 1000:.0f} ms of CPU")
    print(f"{args.pages} pages of ~{args.kb} KB (GBK, charset undeclared), {args.rounds} rounds; event-loop stall:")
    print(f"{'':20}{'worst ms':>10}{'median ms':>11}")
    for name, (stalls, _) in runs.items():
        print(f"{name:20}{max(stalls) * 1000:10.1f}{statistics.median(stalls) * 1000:11.2f}")
    same = all(answers == our_answers for _, answers in runs.values()) and all(MARKER in a["document"]["contents"] for a in our_answers)
    ok = same and max(ours) < max(runs["on the loop"][0]) / 3
    print(f"answers identical and from the pages: {same}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
