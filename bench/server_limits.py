"""A 512 MB request against the real retrieval server: its answer, the server's memory, and
whether normal requests are answered meanwhile.

    python bench/server_limits.py [--runs 3] [--body_mb 512] [--baseline DIR]

The server (``python -m local_dense_retriever.retrieval_server`` in its own process, on 127.0.0.1)
serves the demo corpus with the packaged MiniLM (index built once under bench/_work/). For each
run a fresh server gets one huge body, streamed from a generator so that this client never holds
it, in two ways: with a ``Content-Length`` header, and chunked (no length). Meanwhile one client
keeps sending normal one-query requests. Printed per case, as a range over the runs: the answer,
seconds until it came, MB of the body sent by then, the peak growth of the server's RSS (sampled
every 5 ms, against its RSS just before), and the normal requests answered 200 and their slowest.

``--baseline DIR`` runs the same cases against another checkout of the repository, e.g. main's:
``git archive main | (mkdir -p /tmp/server_main && tar -x -C /tmp/server_main)``.

Target: refused with 413 while the server's memory grows by less than 10 MB (Content-Length), and
every normal request answered throughout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search_r1_slime.demo import prepare  # noqa: E402

WORK = ROOT / "bench" / "_work" / "server_limits"
PIECE = 1 << 20
MB = 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tree: Path, port: int, log: Path) -> subprocess.Popen:
    config = prepare(WORK, show_progress=False)
    argv = [sys.executable, "-m", "local_dense_retriever.retrieval_server", "--host", "127.0.0.1", "--port", str(port),
            "--index_path", config.index_path, "--corpus_path", config.corpus_path,
            "--corpus_arrow_path", str(config.corpus_arrow_path), "--retriever_name", config.retriever_name,
            "--retriever_model", config.retriever_model, "--device", "cpu", "--log_level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    server = subprocess.Popen(argv, cwd=tree, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}; see {log}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not become ready in 120 s; see {log}")


def body_pieces(size: int) -> Iterator[bytes]:
    """A ``{"queries": ["aaa..."]}`` body of ``size`` bytes, one MiB at a time."""
    head, tail = b'{"queries": ["', b'"]}'
    filler = b"a" * PIECE
    left = size - len(head) - len(tail)
    yield head
    while left > 0:
        piece = filler[: min(PIECE, left)]
        left -= len(piece)
        yield piece
    yield tail


def chunked(pieces: Iterator[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


@dataclass
class Outcome:
    status: str = "no answer"
    seconds: float = 0.0
    sent_mb: float = 0.0
    rss_growth_mb: float = 0.0
    normal_ok: int = 0
    normal_total: int = 0
    normal_slowest_ms: float = 0.0
    rss: list[int] = field(default_factory=list, repr=False)


def send_huge(port: int, size: int, with_length: bool, outcome: Outcome) -> None:
    """Stream the body while a second thread waits for the answer; stop sending once it came."""
    framing = f"Content-Length: {size}" if with_length else "Transfer-Encoding: chunked"
    head = f"POST /retrieve HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode()
    pieces = body_pieces(size) if with_length else chunked(body_pieces(size))
    answered = threading.Event()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:

        def read_answer() -> None:
            try:
                response = http.client.HTTPResponse(sock)
                response.begin()
                detail = json.loads(response.read()).get("detail")
                outcome.status = f"{response.status} {str(detail)[:60]}"
            except OSError as exc:
                outcome.status = f"no answer ({type(exc).__name__})"
            outcome.seconds = time.monotonic() - start
            answered.set()

        reader = threading.Thread(target=read_answer)
        reader.start()
        sent = 0
        try:
            sock.sendall(head)
            for piece in pieces:
                if answered.is_set():
                    break
                sock.sendall(piece)
                sent += len(piece)
        except OSError:  # the server closed the connection after answering
            pass
        outcome.sent_mb = sent / MB
        reader.join()


def normal_requests(port: int, stop: threading.Event, outcome: Outcome) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"queries": ["Who designed the Sydney Opera House?"], "topk": 3})
    slowest = 0.0
    while not stop.is_set():
        start = time.monotonic()
        try:
            connection.request("POST", "/retrieve", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            ok = response.status == 200 and len(json.loads(response.read())["result"][0]) == 3
        except (OSError, http.client.HTTPException):
            ok = False
            connection.close()
        slowest = max(slowest, time.monotonic() - start)
        outcome.normal_total += 1
        outcome.normal_ok += ok
        time.sleep(0.02)
    outcome.normal_slowest_ms = slowest * 1000


def sample_rss(process: psutil.Process, stop: threading.Event, samples: list[int]) -> None:
    while not stop.is_set():
        samples.append(process.memory_info().rss)
        time.sleep(0.005)


def run_case(tree: Path, size: int, with_length: bool, log: Path) -> Outcome:
    port = free_port()
    server = start_server(tree, port, log)
    try:
        process = psutil.Process(server.pid)
        warm_up, stop = Outcome(), threading.Event()
        # Warm: the first searches allocate what the encoder needs; that is not the huge body's doing.
        threading.Timer(3.0, stop.set).start()
        normal_requests(port, stop, warm_up)
        outcome, stop = Outcome(), threading.Event()
        normal = threading.Thread(target=normal_requests, args=(port, stop, outcome))
        normal.start()
        before = statistics.median(process.memory_info().rss for _ in range(20))
        sampler = threading.Thread(target=sample_rss, args=(process, stop, outcome.rss))
        sampler.start()
        send_huge(port, size, with_length, outcome)
        time.sleep(1.0)  # normal requests keep going after the answer too
        stop.set()
        normal.join()
        sampler.join()
        outcome.rss_growth_mb = (max(outcome.rss) - before) / MB
        return outcome
    finally:
        server.terminate()
        server.wait(30)


def span(values: list[float], fmt: str = "{:.1f}") -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else f"{fmt.format(low)}-{fmt.format(high)}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--body_mb", type=int, default=512, help="size of the huge body in MiB")
    p.add_argument("--baseline", type=Path, default=None, help="another checkout (e.g. main's) to measure the same way")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    size = args.body_mb << 20
    print(f"{args.body_mb} MiB body, {args.runs} runs per case, a fresh server per run; ranges are min-max over runs\n")
    print(f"{'server':10} {'framing':15} {'answer':68} {'s to answer':>11} {'MB sent':>9} {'RSS +MB':>9} {'normal 200/all':>14} {'slowest ms':>10}")
    verdicts = []
    for name, tree in trees:
        for with_length in (True, False):
            outcomes = [run_case(tree, size, with_length, WORK / "server.log") for _ in range(args.runs)]
            if tree == ROOT:
                verdicts.append(target_met(outcomes, with_length))
            answers = sorted({o.status for o in outcomes})
            print(f"{name:10} {'Content-Length' if with_length else 'chunked':15} {' | '.join(answers)[:68]:68} "
                  f"{span([o.seconds for o in outcomes], '{:.2f}'):>11} {span([o.sent_mb for o in outcomes]):>9} "
                  f"{span([o.rss_growth_mb for o in outcomes]):>9} "
                  f"{' '.join(f'{o.normal_ok}/{o.normal_total}' for o in outcomes):>14} "
                  f"{span([o.normal_slowest_ms for o in outcomes], '{:.0f}'):>10}")
    for ok, text in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}: this tree, {text}")
    return 0


def target_met(outcomes: list[Outcome], with_length: bool) -> tuple[bool, str]:
    """This tree against the target: every normal request answered; with a Content-Length, 413 in
    every run and less than 10 MB of memory growth."""
    normal = all(o.normal_ok == o.normal_total for o in outcomes)
    if not with_length:
        return normal, f"chunked: normal requests all answered: {normal} (target: yes)"
    refused = all(o.status.startswith("413") for o in outcomes)
    growth = max(o.rss_growth_mb for o in outcomes)
    return (normal and refused and growth < 10,
            f"Content-Length: 413 in every run: {refused}, RSS growth up to {growth:.1f} MB, normal requests all answered: "
            f"{normal} (target: 413, < 10 MB, yes)")


if __name__ == "__main__":
    sys.exit(main())
