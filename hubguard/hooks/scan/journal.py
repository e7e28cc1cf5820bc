"""The scan's journal: the repos of a sweep and how each ended (SQLite, WAL), so a killed scan resumes where it was.

    pending -> done            (a verdict is in the log)
    pending -> failed          (retried `retries` times, then reported; the next run tries it again)

A repo is marked done only after its verdict rows are in the registry's verdict log, so a driver killed in between
re-checks that repo (and `has_verdict` keeps its rows from being logged twice); done repos are never checked again
by a later run on the same journal.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hubguard.hooks.journal_db import open_journal

SCHEMA_VERSION = 1
_DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS repos(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, repo_key TEXT UNIQUE NOT NULL, repo_id TEXT NOT NULL, sha TEXT,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, added_at REAL NOT NULL, updated_at REAL NOT NULL,
    status TEXT, result TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS repos_by_state ON repos(state, seq);
"""


@dataclass(frozen=True)
class ScanItem:
    repo_id: str
    sha: str | None = None  # known from the listing (then no extra request resolves it)


class ScanJournal:
    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self._lock = threading.Lock()
        self.path, self._conn = open_journal(path, ddl=_DDL, schema_version=SCHEMA_VERSION, what="The scan journal")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> int:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                n = self._conn.executemany(sql, rows).rowcount
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return n

    def add(self, items: Iterable[ScanItem]) -> int:
        """Add repos not yet in the journal (a repo already there keeps its state); returns how many were new."""
        now = time.time()
        return self._write("INSERT OR IGNORE INTO repos(repo_key, repo_id, sha, state, added_at, updated_at) "
                           "VALUES (?, ?, ?, 'pending', ?, ?)",
                           [(i.repo_id.casefold(), i.repo_id, i.sha, now, now) for i in items])

    def todo(self) -> list[ScanItem]:
        """Repos still to check (pending, and failed ones from earlier runs), oldest first."""
        with self._lock:
            rows = self._conn.execute("SELECT repo_id, sha FROM repos WHERE state IN ('pending', 'failed') ORDER BY seq")
            return [ScanItem(r[0], r[1]) for r in rows.fetchall()]

    def finish(self, result: dict[str, Any]) -> None:
        """Record a result from `check_repo` (done or failed)."""
        state = "done" if result["ok"] else "failed"
        self._write("UPDATE repos SET state=?, sha=coalesce(?, sha), attempts=attempts+?, status=?, result=?, error=?, "
                    "updated_at=? WHERE repo_key=?",
                    [(state, result.get("sha"), result.get("attempts", 1), result.get("status"),
                      json.dumps({k: v for k, v in result.items() if k != "rows"}, default=str), result.get("error"),
                      time.time(), result["repo_id"].casefold())])

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {r[0]: r[1] for r in self._conn.execute("SELECT state, count(*) FROM repos GROUP BY state")}

    def results(self, *, state: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT repo_id, state, attempts, result, error FROM repos"
                                      + (" WHERE state=?" if state else "") + " ORDER BY seq", (state,) if state else ())
            return [{"repo_id": r[0], "state": r[1], "attempts": r[2], "error": r[4], **(json.loads(r[3]) if r[3] else {})}
                    for r in rows.fetchall()]
