"""The bot's journal: every accepted commit, durably, before the Hub gets its 2xx (SQLite, WAL, synchronous=FULL).

A task is one commit to check (`Target.key` = `repo@revision`, repo case-folded), and moves through

    queued -> checking -> logged -> done          (failed: gave up, with the error; a redelivery re-queues it)

`checking` is set when a worker claims the task (a worker that dies leaves it so; the next worker re-queues it),
`logged` once its verdict rows are in the registry's verdict log (the report to post is kept with it), `done` once
the Hub has the comment or discussion (or nothing needed posting). The journal also remembers the discussion the
bot opened per repo. One journal has one worker at a time (`worker_lock`).

Many requests arriving together share one transaction (`Intake`: group commit), so a burst costs one fsync per
batch, not per request.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubguard.errors import HookError
from hubguard.hooks.bot.payload import Target
from hubguard.hooks.journal_db import open_journal

JOURNAL_SCHEMA_VERSION = 1
OPEN_STATES = ("queued", "checking", "logged")
_DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY AUTOINCREMENT, received_at REAL NOT NULL, repo_id TEXT,
                                  scope TEXT, action TEXT, tasks TEXT);
CREATE TABLE IF NOT EXISTS tasks(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE NOT NULL, repo_id TEXT NOT NULL, revision TEXT NOT NULL,
    pr_num INTEGER, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
    sha TEXT, received_at REAL NOT NULL, updated_at REAL NOT NULL, outcome TEXT, result TEXT, report TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks(state, not_before, seq);
CREATE TABLE IF NOT EXISTS discussions(repo_key TEXT PRIMARY KEY, repo_id TEXT NOT NULL, num INTEGER NOT NULL,
                                       updated_at REAL NOT NULL);
"""


class QueueFull(HookError):
    """The journal holds `max_open` unfinished tasks: answer 503 with Retry-After."""


@dataclass(frozen=True)
class Task:
    key: str
    repo_id: str
    revision: str
    pr_num: int | None
    state: str
    attempts: int
    sha: str | None
    outcome: str | None
    result: dict[str, Any]
    report: str | None
    error: str | None

    @property
    def target(self) -> Target:
        return Target(self.repo_id, self.sha or self.revision, pr_num=self.pr_num)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Task":
        return cls(key=row["key"], repo_id=row["repo_id"], revision=row["revision"], pr_num=row["pr_num"],
                   state=row["state"], attempts=row["attempts"], sha=row["sha"], outcome=row["outcome"],
                   result=json.loads(row["result"]) if row["result"] else {}, report=row["report"], error=row["error"])


class Journal:
    """One SQLite journal file. Thread-safe (one connection behind a lock); each process opens its own."""

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self._lock = threading.RLock()
        self.path, self._conn = open_journal(path, ddl=_DDL, schema_version=JOURNAL_SCHEMA_VERSION,
                                             what="The bot's journal")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- intake -------------------------------------------------------------------------------------------

    def accept_in(self, conn: sqlite3.Connection, *, targets: list[Target], event: dict[str, Any],
                  max_open: int) -> tuple[list[str], list[str]]:
        """Insert the targets of one event (inside a transaction): (queued keys, duplicate keys). A failed task
        is queued again; QueueFull when the journal already holds `max_open` unfinished tasks."""
        now = time.time()
        fresh = [t for t in targets if conn.execute("SELECT 1 FROM tasks WHERE key=? AND state!='failed'",
                                                    (t.key,)).fetchone() is None]
        open_now = conn.execute(f"SELECT count(*) FROM tasks WHERE state IN {OPEN_STATES}").fetchone()[0]
        if fresh and open_now + len(fresh) > max_open:
            raise QueueFull(f"The bot has {open_now} commits waiting (limit {max_open}).", fix="Retry later.")
        queued = []
        for t in fresh:
            conn.execute("INSERT INTO tasks(key, repo_id, revision, pr_num, state, received_at, updated_at) "
                         "VALUES (?, ?, ?, ?, 'queued', ?, ?) ON CONFLICT(key) DO UPDATE SET state='queued', "
                         "attempts=0, not_before=0, error=NULL, updated_at=excluded.updated_at",
                         (t.key, t.repo_id, t.revision, t.pr_num, now, now))
            queued.append(t.key)
        conn.execute("INSERT INTO events(received_at, repo_id, scope, action, tasks) VALUES (?, ?, ?, ?, ?)",
                     (now, event.get("repo_id"), event.get("scope"), event.get("action"), json.dumps(queued)))
        return queued, [t.key for t in targets if t not in fresh]

    # -- the worker's side ----------------------------------------------------------------------------------

    def recover(self) -> int:
        """Re-queue tasks a dead worker left in `checking` (call with the worker lock held)."""
        with self.transaction() as conn:
            return conn.execute("UPDATE tasks SET state='queued', updated_at=? WHERE state='checking'",
                                (time.time(),)).rowcount

    def claim(self) -> Task | None:
        """The oldest task due: a queued one becomes `checking` (attempts + 1); a logged one is returned as is."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM tasks WHERE state IN ('queued', 'logged') AND not_before <= ? "
                               "ORDER BY seq LIMIT 1", (time.time(),)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                conn.execute("UPDATE tasks SET state='checking', attempts=attempts+1, updated_at=? WHERE key=?",
                             (time.time(), row["key"]))
                row = conn.execute("SELECT * FROM tasks WHERE key=?", (row["key"],)).fetchone()
            return Task.from_row(row)

    def update(self, key: str, *, state: str, delay_s: float = 0.0, **fields: Any) -> None:
        """Move a task to `state`, setting `fields` (sha, outcome, result (a dict), report, error)."""
        if "result" in fields and not isinstance(fields["result"], (str, type(None))):
            fields["result"] = json.dumps(fields["result"], default=str)
        cols = "".join(f", {k}=?" for k in fields)
        with self.transaction() as conn:
            conn.execute(f"UPDATE tasks SET state=?, not_before=?, updated_at=?{cols} WHERE key=?",
                         (state, time.time() + delay_s, time.time(), *fields.values(), key))

    def task(self, key: str) -> Task | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM tasks WHERE key=?", (key,)).fetchone()
        return Task.from_row(row) if row is not None else None

    def tasks(self, *, state: str | None = None) -> list[Task]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM tasks" + (" WHERE state=?" if state else "") + " ORDER BY seq",
                                      (state,) if state else ()).fetchall()
        return [Task.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {r[0]: r[1] for r in self._conn.execute("SELECT state, count(*) FROM tasks GROUP BY state")}

    def open_count(self) -> int:
        with self._lock:
            return self._conn.execute(f"SELECT count(*) FROM tasks WHERE state IN {OPEN_STATES}").fetchone()[0]

    def discussion(self, repo_id: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT num FROM discussions WHERE repo_key=?", (repo_id.casefold(),)).fetchone()
        return int(row[0]) if row is not None else None

    def set_discussion(self, repo_id: str, num: int) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO discussions VALUES (?, ?, ?, ?) ON CONFLICT(repo_key) DO UPDATE SET num=excluded.num,"
                         " updated_at=excluded.updated_at", (repo_id.casefold(), repo_id, num, time.time()))


@contextmanager
def worker_lock(journal_path: "str | os.PathLike[str]", *, stop: threading.Event | None = None,
                timeout_s: float | None = None) -> Iterator[bool]:
    """Hold the journal's worker lock (an flock, released when the process dies, even by kill -9). Waits while
    another worker holds it; yields False when `stop` was set (or `timeout_s` passed) before it was acquired."""
    path = Path(f"{journal_path}.worker.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(open(path, "a+")) as fh:  # noqa: SIM115 - the lock lives as long as the file is open
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if (stop is not None and stop.wait(0.2)) or (deadline is not None and time.monotonic() > deadline):
                    yield False
                    return
                if stop is None:
                    time.sleep(0.2)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class Intake:
    """Accepts events into the journal with group commit: concurrent `accept` calls share one transaction."""

    def __init__(self, journal: Journal, *, max_open: int) -> None:
        self.journal = journal
        self.max_open = max_open
        self._requests: queue.Queue[tuple[list[Target], dict[str, Any], Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._commit_loop, name="hubguard-bot-intake", daemon=True)
        self._thread.start()

    def submit(self, targets: list[Target], event: dict[str, Any]) -> Future:
        """A future of (queued keys, duplicate keys), or of QueueFull."""
        fut: Future = Future()
        self._requests.put((targets, event, fut))
        return fut

    def accept(self, targets: list[Target], event: dict[str, Any], *, timeout_s: float = 30.0) -> tuple[list[str], list[str]]:
        return self.submit(targets, event).result(timeout=timeout_s)

    def _commit_loop(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    item = self._requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._requests.put(None)
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[tuple[list[Target], dict[str, Any], Future]]) -> None:
        outcomes: list[Any] = []
        try:
            with self.journal.transaction() as conn:
                for targets, event, _ in batch:
                    conn.execute("SAVEPOINT one")
                    try:
                        outcomes.append(self.journal.accept_in(conn, targets=targets, event=event, max_open=self.max_open))
                        conn.execute("RELEASE one")
                    except QueueFull as err:
                        conn.execute("ROLLBACK TO one")
                        conn.execute("RELEASE one")
                        outcomes.append(err)
        except Exception as err:  # noqa: BLE001 - the disk or the database failed: every request of the batch fails
            for *_, fut in batch:
                fut.set_exception(err)
            return
        for (*_, fut), outcome in zip(batch, outcomes):  # answered only after COMMIT: durable before the 2xx
            if isinstance(outcome, Exception):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=10)
