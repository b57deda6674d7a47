"""The search database: every search recorded, replayed, paid for once, within a budget.

One SQLite file (``search_r1.search_db.path``) shared by every rollout worker process of a run and
by later runs (docs/reproducibility.md):

* **record**: each search the backend answers becomes a row of ``searches``: run, time, backend,
  query, top_k, the backend's fingerprint (the retrieval server's, on its answer; Google's from
  ``google_search_server.fingerprint``), the results as JSON, seconds taken, process id;
* **replay**: a search is answered from the latest row of the same backend, query and top_k. In
  ``strict`` mode a search without a row, or a row made against another fingerprint than the one
  expected, raises ``ReplayError`` with one line naming it; ``lenient`` asks the backend instead;
* **paid cache** (Google only): an answer is kept in ``paid_cache`` under the query, top_k and
  Google fingerprint (provider and the settings that shape the answer, never the key) and reused by
  every worker and every later run until it is ``paid_cache_ttl`` seconds old;
* **budget**: before a paid request is sent, the run's counter row in ``paid_requests`` is
  incremented in one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock, so two processes can
  never both take the last request); past ``max_paid_requests`` the search raises ``BudgetSpent``,
  which the turn loop turns into a message the model reads.

Concurrency: WAL journal (readers never wait for the writer), ``busy_timeout`` for the write lock.
Every SQLite call runs in one thread per process (``_EXECUTORS``), never on the event loop; each
search's row is committed before its answer is returned (rows of searches answered together share
one transaction), so a killed worker loses no answered search. Any problem with the file itself (missing, not a database, corrupt) is a ``SearchDbError``:
one line naming the file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_r1_slime.http_client import RequestFailed, one_line

logger = logging.getLogger(__name__)

# Rows per INSERT statement: 9 values each, well under SQLite's default limit of 32766 variables.
_ROWS_PER_STATEMENT = 500
# PRAGMA user_version of a database this module made; another value is refused, not misread.
SCHEMA_VERSION = 1
# One statement each: they run inside a transaction, where sqlite3's executescript cannot (it commits first).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS searches (
        id INTEGER PRIMARY KEY, run TEXT NOT NULL, at REAL NOT NULL, backend TEXT NOT NULL, query TEXT NOT NULL,
        top_k INTEGER NOT NULL, fingerprint TEXT, results TEXT NOT NULL, seconds REAL, pid INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS searches_by_key ON searches (backend, query, top_k)",
    "CREATE TABLE IF NOT EXISTS paid_cache (key TEXT PRIMARY KEY, results TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS paid_requests (run TEXT PRIMARY KEY, count INTEGER NOT NULL)",
)


class SearchDbError(ValueError):
    """The database file cannot be used; the message is one line naming it and why."""


class ReplayError(RuntimeError):
    """Strict replay met a search it cannot answer from the record (one line naming the search)."""


class BudgetSpent(RequestFailed):
    """The run's paid requests are all spent; the search was not sent."""


@dataclass
class DbStats:
    """This process's counters (only grow; rollout_metrics reads a rollout's window of them).

    ``run_paid``: the run's paid requests, all processes together, as last seen here."""

    recorded: int = 0
    replayed: int = 0
    paid: int = 0
    paid_cache_hits: int = 0
    budget_refusals: int = 0
    run_paid: int = 0
    run_cost: float = 0.0


# One SQLite thread per process, made after a fork as well (a thread does not survive one).
_EXECUTORS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    pid = os.getpid()
    if pid not in _EXECUTORS:
        _EXECUTORS[pid] = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-db")
    return _EXECUTORS[pid]


class SearchDb:
    """One database file. The synchronous methods run on the SQLite thread; ``call`` gets there."""

    def __init__(self, path: str | os.PathLike, *, must_exist: bool = False, busy_timeout: float = 30.0,
                 clock: Callable[[], float] = time.time):
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self.clock = clock
        self.stats = DbStats()
        self._local = threading.local()
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[tuple, asyncio.Future[None]]]] = {}
        self._writing: set[asyncio.Task] = set()
        if must_exist and not Path(self.path).is_file():
            raise SearchDbError(f"search database {self.path} does not exist: replay reads the file a recorded run wrote")
        if not Path(self.path).parent.is_dir():
            raise SearchDbError(f"search database {self.path}: its folder {Path(self.path).parent} does not exist")

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(_executor(), method, *args)

    async def record_one(self, row: tuple) -> None:
        """Write ``row`` (as ``record`` takes it); return once it is committed.

        Group commit: the rows of every search answered while the SQLite thread is busy are
        written together, in one transaction, by the next write. A GRPO step's searches finish in
        bursts (a batched request answers dozens at once, single flight hands one answer to every
        sample that asked), and one transaction per row queued them behind each other.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self._pending.setdefault(loop, [])
        pending.append((row, future))
        if len(pending) == 1:  # the first row since the last write was handed over: start the next
            loop.call_soon(self._write_pending, loop)
        await future

    def _write_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop, [])

        async def write() -> None:
            try:
                await self.call(self.record, [row for row, _ in batch])
            except Exception as exc:  # SearchDbError: every search of the batch reports it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

        task = loop.create_task(write())
        self._writing.add(task)  # a strong reference: the loop keeps only weak ones
        task.add_done_callback(self._writing.discard)

    # ---- on the SQLite thread

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            connection = self._local.connection = self._guard(self._open)
            self._local.pid = os.getpid()
        return connection

    def _open(self) -> sqlite3.Connection:
        # Autocommit (isolation_level=None): every statement is its own transaction unless BEGIN opens one.
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        self._turn_to_wal(connection)  # the first read of the file: a non-database fails here
        connection.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt

        def create() -> None:  # in one write transaction: processes opening a new file together create it once
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise SearchDbError(f"search database {self.path} has schema version {version}, this plugin reads {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

        self._in_transaction(connection, create)
        return connection

    def _turn_to_wal(self, connection: sqlite3.Connection) -> None:
        """``PRAGMA journal_mode=WAL``, retried until ``busy_timeout``: the change needs the file's
        exclusive lock, and while another connection writes (or changes it too) SQLite answers
        "locked" at once instead of waiting, to avoid a deadlock
        (https://www.sqlite.org/c3ref/busy_handler.html). A file already in WAL mode never waits here."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def _guard(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except sqlite3.DatabaseError as exc:  # not a database, corrupt, locked past busy_timeout, read-only...
            reason = one_line(exc)
            damaged = "not a database" in reason or "malformed" in reason
            hint = " (not a SQLite database, or a damaged one: move it away or set another search_r1.search_db.path)" if damaged else ""
            raise SearchDbError(f"search database {self.path}: {reason}{hint}") from None

    def check(self) -> None:
        """Open the file now (created when missing), so a problem shows before the first search."""
        self._connection()

    def record(self, rows: list[tuple]) -> None:
        """Rows of (run, backend, query, top_k, fingerprint, results, seconds)."""
        at, pid = self.clock(), os.getpid()
        values = [(run, at, backend, query, top_k, fp, json.dumps(results, ensure_ascii=False), seconds, pid)
                  for run, backend, query, top_k, fp, results, seconds in rows]
        connection = self._connection()

        def insert() -> None:
            # One statement per chunk, not executemany: sqlite3 lets go of the GIL around every
            # statement, and while the event loop's thread is busy each taking back can wait for
            # its switch interval (5 ms).
            for start in range(0, len(values), _ROWS_PER_STATEMENT):
                chunk = values[start : start + _ROWS_PER_STATEMENT]
                connection.execute(
                    "INSERT INTO searches (run, at, backend, query, top_k, fingerprint, results, seconds, pid) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
                    [value for row in chunk for value in row],
                )

        self._guard(lambda: self._in_transaction(connection, insert))

    def lookup(self, backend: str, query: str, top_k: int) -> tuple[str | None, list[dict]] | None:
        """(fingerprint, results) of the latest recorded search alike, None when there is none."""
        connection = self._connection()
        row = self._guard(lambda: connection.execute(
            "SELECT fingerprint, results FROM searches WHERE backend = ? AND query = ? AND top_k = ? ORDER BY id DESC LIMIT 1",
            (backend, query, top_k)).fetchone())
        return None if row is None else (row[0], json.loads(row[1]))

    def cached(self, key: str, ttl: float) -> list[dict] | None:
        """A paid answer kept under ``key`` less than ``ttl`` seconds ago, else None."""
        connection = self._connection()
        row = self._guard(lambda: connection.execute("SELECT results, at FROM paid_cache WHERE key = ?", (key,)).fetchone())
        return json.loads(row[0]) if row is not None and self.clock() - row[1] < ttl else None

    def keep(self, key: str, results: list[dict]) -> None:
        connection = self._connection()
        self._guard(lambda: connection.execute(
            "INSERT OR REPLACE INTO paid_cache (key, results, at) VALUES (?, ?, ?)",
            (key, json.dumps(results, ensure_ascii=False), self.clock())))

    @staticmethod
    def _in_transaction(connection: sqlite3.Connection, action: Callable[[], Any]) -> Any:
        """``action()`` in one write transaction. IMMEDIATE takes the write lock before the first
        read, so no other process can read the same state in between and act on it too."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = action()
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    def claim(self, run: str, limit: int | None) -> tuple[bool, int]:
        """Take one paid request of ``run`` when fewer than ``limit`` are taken: (taken, count after)."""
        connection = self._connection()

        def take() -> tuple[bool, int]:
            row = connection.execute("SELECT count FROM paid_requests WHERE run = ?", (run,)).fetchone()
            count = 0 if row is None else row[0]
            if limit is not None and count >= limit:
                return False, count  # nothing written: the commit only lets go of the lock
            connection.execute("INSERT OR REPLACE INTO paid_requests (run, count) VALUES (?, ?)", (run, count + 1))
            return True, count + 1

        # The read and the increment in one write transaction: two processes never take the last request both.
        return self._guard(lambda: self._in_transaction(connection, take))

    def paid_count(self, run: str) -> int:
        connection = self._connection()
        row = self._guard(lambda: connection.execute("SELECT count FROM paid_requests WHERE run = ?", (run,)).fetchone())
        return 0 if row is None else row[0]


_DATABASES: dict[tuple[int, str], SearchDb] = {}


def database(settings: Mapping[str, Any]) -> SearchDb:
    """This process's ``SearchDb`` of ``search_r1.search_db`` (one per file)."""
    key = (os.getpid(), os.path.abspath(settings["path"]))
    if key not in _DATABASES:
        _DATABASES[key] = SearchDb(settings["path"], must_exist=settings["replay"] != "off", busy_timeout=settings["busy_timeout"])
    return _DATABASES[key]


def stats(settings: Mapping[str, Any]) -> dict[str, float]:
    """This process's counters for the configured database (for a trajectory's metrics)."""
    return dataclasses.asdict(database(settings).stats)


def _paid_cache_key(fingerprint: str, query: str, top_k: int) -> str:
    return json.dumps([fingerprint, top_k, query], ensure_ascii=False)


class PaidLedger:
    """The paid-search layer ``google_search`` runs each request it would send through."""

    def __init__(self, db: SearchDb, settings: Mapping[str, Any], fingerprint: str):
        self.db, self.settings, self.fingerprint = db, settings, fingerprint

    async def pay(self, query: str, top_k: int, send: Callable[[], Awaitable[list[dict]]]) -> list[dict]:
        """The shared cache's answer, else ``send()`` once the budget allows it."""
        db, settings, stats = self.db, self.settings, self.db.stats
        ttl, key = settings["paid_cache_ttl"], _paid_cache_key(self.fingerprint, query, top_k)
        if ttl > 0 and (results := await db.call(db.cached, key, ttl)) is not None:
            stats.paid_cache_hits += 1
            return results
        taken, count = await db.call(db.claim, settings["run"], settings["max_paid_requests"])
        stats.run_paid = max(stats.run_paid, count)
        stats.run_cost = stats.run_paid * settings["price_per_request"]
        if not taken:
            stats.budget_refusals += 1
            message = (f"the paid search budget of run {settings['run']!r} is spent ({count} of "
                       f"search_r1.search_db.max_paid_requests={settings['max_paid_requests']} requests made); not sent")
            # Once per process at WARNING: every later search of the run is refused the same way.
            logger.log(logging.WARNING if stats.budget_refusals == 1 else logging.DEBUG,
                       "%s; searches now tell the model so", message)
            raise BudgetSpent(message)
        stats.paid += 1
        results = await send()
        if ttl > 0:
            await db.call(db.keep, key, results)
        return results


def expected_fingerprint(config: Mapping[str, Any]) -> str | None:
    """What replayed searches must have been recorded against (see ``SearchDbSettings``)."""
    settings = config["search_db"]
    if settings["expect_fingerprint"] is not None:
        return settings["expect_fingerprint"]
    if config["search_backend"] == "google":
        from google_search_server import fingerprint

        return fingerprint(config["google"], with_links=config["access"]["enabled"])
    return None


def live_fingerprint(config: Mapping[str, Any]) -> str | None:
    """The fingerprint of the answer the backend just gave (None: a server that reports none)."""
    if config["search_backend"] == "google":
        from google_search_server import fingerprint

        return fingerprint(config["google"], with_links=config["access"]["enabled"])
    from local_search_server import local_search_fingerprint

    return local_search_fingerprint(config["local"]["search_url"])


# The fingerprint a strict replay without an expectation holds the record to: its first row's.
_SEEN_FINGERPRINTS: dict[tuple[int, str, str], str | None] = {}


async def search(query: str, config: Mapping[str, Any],
                 ask_backend: Callable[[PaidLedger | None], Awaitable[list[dict]]]) -> list[dict]:
    """One search through the database: replayed, or asked (``ask_backend(ledger)``) and recorded."""
    settings = config["search_db"]
    db = database(settings)
    backend, top_k = config["search_backend"], config["topk"]
    if settings["replay"] != "off":
        found = await db.call(db.lookup, backend, query, top_k)
        strict = settings["replay"] == "strict"
        if found is None:
            problem = f"search not in the record {db.path}: backend {backend}, top_k {top_k}, query {query!r}"
            if strict:
                raise ReplayError(problem)
            logger.info("%s; asking the backend", problem)
        else:
            fingerprint, results = found
            seen = (os.getpid(), db.path, backend)
            expected = expected_fingerprint(config) or _SEEN_FINGERPRINTS.setdefault(seen, fingerprint)
            if fingerprint == expected or not strict:
                if fingerprint != expected:
                    logger.warning("replaying %r recorded against fingerprint %s, not %s", query, fingerprint, expected)
                db.stats.replayed += 1
                return results
            raise ReplayError(
                f"search {query!r} (backend {backend}, top_k {top_k}) was recorded in {db.path} against fingerprint "
                f"{fingerprint}, not {expected}: another index, corpus, encoder or setting answered it"
            )
    ledger = None
    if backend == "google" and (settings["paid_cache_ttl"] > 0 or settings["max_paid_requests"] is not None):
        ledger = PaidLedger(db, settings, live_fingerprint(config))
    started = time.monotonic()
    results = await ask_backend(ledger)
    seconds = time.monotonic() - started
    if settings["record"]:
        row = (settings["run"], backend, query, top_k, live_fingerprint(config), results, seconds)
        await db.record_one(row)
        db.stats.recorded += 1
    return results
