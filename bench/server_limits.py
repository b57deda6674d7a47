"""Attacks on the real retrieval server beside normal clients: what the attacker gets, the
server's memory, and whether the normal clients keep getting exact answers.

    python bench/server_limits.py [--runs 3] [--cases ...] [--trickle_s 60] [--baseline DIR]

The server (``python -m local_dense_retriever.retrieval_server`` in its own process, on 127.0.0.1)
serves the demo corpus with the packaged MiniLM (index built once under bench/_work/). For each
run and case a fresh server gets one attack, while one client keeps sending a normal one-query
request whose answer must equal, passage for passage, a direct retrieval in this process:

* ``body-length``: a 512 MiB body (``--body_mb``) announced by its ``Content-Length``, streamed
  from a generator so that this client never holds it;
* ``body-chunked``: the same body chunked (no length): it is read until it passes the limit;
* ``header-80mb``: one 80 MB header (``--header_mb``), sent as fast as the server reads;
* ``head-trickle``: a head sent a byte every 0.5 s for ``--trickle_s`` seconds;
* ``connections``: 2,000 connections (``--connections``) opened at once, sending nothing, held
  for 5 s.

Printed per case, as a range over the runs: the attacker's answer, seconds until it came, MB
sent by then, the peak growth of the server's RSS (sampled every 5 ms, against its RSS just
before), the normal requests answered exactly and their slowest, and PASS/FAIL against the
targets: refused (``body-chunked``: 413 after at most the body limit), the server's memory
growing by less than 10 MB (``body-chunked``: less than the body limit, 48 MiB by default, plus
10 MB), and every normal request answered exactly.

``--baseline DIR`` runs the same cases against another checkout of the repository, e.g. main's:
``git archive main | (mkdir -p /tmp/server_main && tar -x -C /tmp/server_main)``.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import select
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
    refused: bool = False
    seconds: float = 0.0
    sent_mb: float = 0.0
    rss_growth_mb: float = 0.0
    normal_ok: int = 0
    normal_total: int = 0
    normal_slowest_ms: float = 0.0
    rss: list[int] = field(default_factory=list, repr=False)


def send_until_answered(port: int, head: bytes, pieces: Iterator[bytes], outcome: Outcome, *, refusal: str,
                        pause_s: float = 0.0) -> None:
    """Send the head, then the pieces (``pause_s`` apart) while a second thread waits for the answer;
    stop sending once it came. ``refusal`` is the status that counts as refused."""
    answered, gave_up = threading.Event(), threading.Event()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:

        def read_answer() -> None:
            try:
                response = http.client.HTTPResponse(sock)
                response.begin()
                detail = json.loads(response.read()).get("detail")
                outcome.status = f"{response.status} {str(detail)[:60]}"
                outcome.refused = str(response.status) == refusal
            except (OSError, http.client.HTTPException) as exc:
                outcome.status = "not refused: gave up sending" if gave_up.is_set() else f"closed ({type(exc).__name__})"
            outcome.seconds = time.monotonic() - start
            answered.set()

        reader = threading.Thread(target=read_answer)
        reader.start()
        sent = 0
        try:
            sock.sendall(head)
            for piece in pieces:
                if answered.wait(pause_s):
                    break
                sock.sendall(piece)
                sent += len(piece)
        except OSError:  # the server closed the connection after answering
            pass
        outcome.sent_mb = sent / MB
        if not answered.wait(5.0):  # everything sent and no answer: the server would keep waiting
            gave_up.set()
            sock.shutdown(socket.SHUT_RDWR)
        reader.join()


def retrieve_head(framing: str) -> bytes:
    return f"POST /retrieve HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode()


def body_with_length(port: int, args: argparse.Namespace, outcome: Outcome) -> None:
    size = args.body_mb << 20
    send_until_answered(port, retrieve_head(f"Content-Length: {size}"), body_pieces(size), outcome, refusal="413")


def body_chunked(port: int, args: argparse.Namespace, outcome: Outcome) -> None:
    size = args.body_mb << 20
    send_until_answered(port, retrieve_head("Transfer-Encoding: chunked"), chunked(body_pieces(size)), outcome, refusal="413")


def header_80mb(port: int, args: argparse.Namespace, outcome: Outcome) -> None:
    piece = b"a" * (1 << 16)
    pieces = itertools.repeat(piece, int(args.header_mb * MB) // len(piece))
    send_until_answered(port, b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Big: ", pieces, outcome, refusal="431")


def head_trickle(port: int, args: argparse.Namespace, outcome: Outcome) -> None:
    pieces = itertools.repeat(b"a", int(args.trickle_s / TRICKLE_PAUSE_S))
    send_until_answered(port, b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Slow: ", pieces, outcome, refusal="408",
                        pause_s=TRICKLE_PAUSE_S)


def many_connections(port: int, args: argparse.Namespace, outcome: Outcome) -> None:
    """Open the connections at once, send nothing, hold them; those the server refuses answer 503."""
    start = time.monotonic()
    sockets = {}
    poller = select.poll()  # select() takes no descriptor above 1023
    try:
        for _ in range(args.connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets[sock.fileno()] = sock
            poller.register(sock, select.POLLIN)
        refused, deadline = 0, time.monotonic() + HOLD_S
        while (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)  # answered or closed: nothing more to see on it
                refused += sockets[fd].recv(4096).startswith(b"HTTP/1.1 503 ")
        # The normal client holds one of the server's connections.
        outcome.refused = refused >= args.connections - args.max_connections
        outcome.status = f"{refused} of {args.connections} refused with 503 at once, the rest held {HOLD_S:g} s"
        outcome.seconds = time.monotonic() - start
    finally:
        for sock in sockets.values():
            sock.close()


TRICKLE_PAUSE_S = 0.5
HOLD_S = 5.0
CASES = {"body-length": body_with_length, "body-chunked": body_chunked, "header-80mb": header_80mb,
         "head-trickle": head_trickle, "connections": many_connections}


def expected_contents(config) -> list[str]:
    """The normal query's passages from a direct retrieval in this process: what the server must answer."""
    from local_dense_retriever.retriever import load_retriever

    (hits,) = load_retriever(config).retrieve([NORMAL_QUERY], 3)
    return [hit.document["contents"] for hit in hits]


NORMAL_QUERY = "Who designed the Sydney Opera House?"


def normal_requests(port: int, want: list[str], stop: threading.Event, outcome: Outcome) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"queries": [NORMAL_QUERY], "topk": 3})
    slowest = 0.0
    while not stop.is_set():
        start = time.monotonic()
        try:
            connection.request("POST", "/retrieve", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            ok = response.status == 200 and [doc["contents"] for doc in answer["result"][0]] == want
        except (OSError, http.client.HTTPException, ValueError):
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


def run_case(tree: Path, attack, args: argparse.Namespace, want: list[str], log: Path) -> Outcome:
    port = free_port()
    server = start_server(tree, port, log)
    try:
        process = psutil.Process(server.pid)
        warm_up, stop = Outcome(), threading.Event()
        # Warm: the first searches allocate what the encoder needs; that is not the attack's doing.
        threading.Timer(3.0, stop.set).start()
        normal_requests(port, want, stop, warm_up)
        outcome, stop = Outcome(), threading.Event()
        normal = threading.Thread(target=normal_requests, args=(port, want, stop, outcome))
        normal.start()
        while outcome.normal_total == 0:  # connected before the attack, as a running client is
            time.sleep(0.01)
        before = statistics.median(process.memory_info().rss for _ in range(20))
        sampler = threading.Thread(target=sample_rss, args=(process, stop, outcome.rss))
        sampler.start()
        attack(port, args, outcome)
        time.sleep(1.0)  # normal requests keep going after the answer too
        stop.set()
        normal.join()
        sampler.join()
        outcome.rss_growth_mb = (max(outcome.rss) - before) / MB
        return outcome
    finally:
        server.terminate()
        server.wait(30)


def verdict(case: str, outcomes: list[Outcome], body_limit_mb: float) -> str:
    memory_target = body_limit_mb + 10 if case == "body-chunked" else 10
    passed = all(o.refused and o.rss_growth_mb < memory_target and 0 < o.normal_ok == o.normal_total for o in outcomes)
    return "PASS" if passed else "FAIL"


def span(values: list[float], fmt: str = "{:.1f}") -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else f"{fmt.format(low)}-{fmt.format(high)}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--body_mb", type=int, default=512, help="size of the huge body in MiB")
    p.add_argument("--header_mb", type=float, default=80, help="size of the huge header in MB")
    p.add_argument("--trickle_s", type=float, default=60, help="how long the head is trickled at most")
    p.add_argument("--connections", type=int, default=2000, help="connections opened at once")
    p.add_argument("--baseline", type=Path, default=None, help="another checkout (e.g. main's) to measure the same way")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    config = prepare(WORK, show_progress=False)
    args.max_connections = config.max_connections  # the server's default
    want = expected_contents(config)
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    print(f"{args.runs} runs per case, a fresh server per run; ranges are min-max over runs\n")
    print(f"{'server':10} {'case':13} {'attacker got':68} {'s':>11} {'MB sent':>9} {'RSS +MB':>9} "
          f"{'normal exact/all':>17} {'slowest ms':>10} {'verdict':>7}")
    for name, tree in trees:
        for case in args.cases:
            outcomes = [run_case(tree, CASES[case], args, want, WORK / "server.log") for _ in range(args.runs)]
            answers = sorted({o.status for o in outcomes})
            print(f"{name:10} {case:13} {' | '.join(answers)[:68]:68} "
                  f"{span([o.seconds for o in outcomes], '{:.2f}'):>11} {span([o.sent_mb for o in outcomes]):>9} "
                  f"{span([o.rss_growth_mb for o in outcomes]):>9} "
                  f"{' '.join(f'{o.normal_ok}/{o.normal_total}' for o in outcomes):>17} "
                  f"{span([o.normal_slowest_ms for o in outcomes], '{:.0f}'):>10} "
                  f"{verdict(case, outcomes, config.body_limit / MB):>7}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
