"""The SQLite file under the bot's and the scan's journals: WAL, fsync'd commits, a schema version, clear errors."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from hubguard.errors import HookError


def open_journal(path: "str | os.PathLike[str]", *, ddl: str, schema_version: int, what: str,
                 option: str = "--journal") -> tuple[Path, sqlite3.Connection]:
    """Open (or create) a journal: `what` names it in errors ("The bot's journal"), `option` is the flag that moves it."""
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(file, timeout=60, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # what is committed survives a power cut, not just kill -9
        conn.executescript(ddl)
        conn.execute("INSERT OR IGNORE INTO meta VALUES('schema_version', ?)", (str(schema_version),))
        version = int(conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
    except sqlite3.DatabaseError as err:
        raise HookError(f"{what} '{file}' cannot be opened ({err}).",
                        fix=f"Point {option} at a new file, or move the damaged one away.") from err
    if version > schema_version:
        conn.close()
        raise HookError(f"{what} '{file}' has schema version {version}; this hubguard reads {schema_version}.",
                        fix=f"Upgrade hubguard, or use another {option}.")
    return file, conn
