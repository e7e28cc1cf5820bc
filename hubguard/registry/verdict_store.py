"""Storage of the verdict log: append-only Parquet segments (what is published) and a local SQLite index (what
queries read), so an append costs one small file and a lookup an index probe, at any size of the log.

Segments (in the registry folder, read by `datasets` and DuckDB; `registry push` and the Space's write-back compact
them first, so a Hub dataset holds the log as the one file `data/verdicts.parquet`)::

    data/verdicts.parquet                              a log written before segments existed: rows 0..n-1
    data/verdicts-{first:012d}-{last:012d}.parquet     rows `first..last` (a row's sequence number is its position)

An append writes one segment (atomic rename) under the registry's write lock. Size-tiered compaction merges
`FANOUT` consecutive segments of the same size tier into one, so a log of n rows has O(FANOUT · log n) files and each
row is rewritten O(log n) times. A merge writes the merged segment before it deletes the parts; a reader that
finds a segment inside another one's range (a merge interrupted between the two) ignores the part.

The index (`.cache/index/verdicts.sqlite`, local only, WAL; `registry pull` clears it) holds every row with indexes by repo and revision,
by match, and by time for flagged rows. It remembers the segment files (name, size, mtime) it has read; when the
folder holds others (a pull, a writer killed between its segment and its index update) it reads the new
segments, or rebuilds from all of them when an indexed one changed.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import RegistryCorruptError
from hubguard.registry import schema
from hubguard.utils import get_logger

if TYPE_CHECKING:
    import pyarrow as pa

    from hubguard.registry.store import Registry

logger = get_logger(__name__)

FANOUT = 16
ROW_GROUP_ROWS = 1 << 16
INDEX_SCHEMA_VERSION = 1
LEGACY_NAME = Path(schema.VERDICTS_FILE).name
_SEGMENT_RE = re.compile(r"^verdicts-(\d{12})-(\d{12})\.parquet$")
INDEXED = [c for c in schema.VERDICT_COLUMNS]  # every column; `seq` and the case-folded keys are added
_DDL = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS segments(name TEXT PRIMARY KEY, first INTEGER, last INTEGER, size INTEGER, mtime_ns INTEGER);
CREATE TABLE IF NOT EXISTS rows(seq INTEGER PRIMARY KEY, repo_key TEXT, {", ".join(f'"{c}"' for c in INDEXED)});
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS rows_by_repo ON rows(repo_key, revision, source);
CREATE INDEX IF NOT EXISTS rows_by_match ON rows("match", repo_key);
CREATE INDEX IF NOT EXISTS rows_by_time ON rows(logged_at);
CREATE INDEX IF NOT EXISTS rows_flagged_by_time ON rows(logged_at) WHERE flagged = 1;
"""
_DROP_INDEXES = "DROP INDEX IF EXISTS rows_by_repo; DROP INDEX IF EXISTS rows_by_match; DROP INDEX IF EXISTS rows_by_time; " \
    "DROP INDEX IF EXISTS rows_flagged_by_time;"
BULK_ROWS = 200_000  # a rebuild or catch-up with more rows than this builds the indexes after the inserts


def _run_each(conn: sqlite3.Connection, script: str) -> None:
    """Statements one by one (`executescript` would COMMIT the open transaction first)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


@dataclass(frozen=True)
class Segment:
    path: Path
    first: int
    last: int

    @property
    def rows(self) -> int:
        return self.last - self.first + 1

    @property
    def tier(self) -> int:
        return int(math.log(self.rows, FANOUT)) if self.rows >= FANOUT else 0


def repo_key(repo_id: str | None) -> str | None:
    """How the index compares repo ids: the Hub treats them case-insensitively."""
    return repo_id.strip().casefold() if isinstance(repo_id, str) else None


def segment_name(first: int, last: int) -> str:
    return f"verdicts-{first:012d}-{last:012d}.parquet"


class VerdictStore:
    """The verdict log of one registry folder (segments + index). Open one per operation; it holds no handles."""

    def __init__(self, registry: "Registry") -> None:
        self.registry = registry
        self.data_dir = registry.path / Path(schema.VERDICTS_FILE).parent

    # -- segments ---------------------------------------------------------------------------------------

    def _legacy_rows(self, path: Path) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException):
            schema.read_table(path, columns=schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT)  # raises, naming it
            raise

    def segments(self) -> list[Segment]:
        """The live segments, oldest first (parts of an interrupted merge left out)."""
        found: list[Segment] = []
        if self.data_dir.is_dir():
            for entry in os.scandir(self.data_dir):
                m = _SEGMENT_RE.match(entry.name)
                if m is not None:
                    found.append(Segment(Path(entry.path), int(m.group(1)), int(m.group(2))))
                elif entry.name == LEGACY_NAME:
                    rows = self._legacy_rows(Path(entry.path))
                    if rows:
                        found.append(Segment(Path(entry.path), 0, rows - 1))
        found.sort(key=lambda s: (s.first, -s.last))
        live: list[Segment] = []
        for seg in found:
            if live and seg.last <= live[-1].last:
                continue  # inside the previous one: a part of a merge that was not deleted yet
            if live and seg.first != live[-1].last + 1:
                raise RegistryCorruptError(
                    f"The verdict log in '{self.data_dir}' has segments {live[-1].path.name} and {seg.path.name}, whose "
                    "row ranges overlap or leave a gap; a file was removed or copied in by hand. Restore the folder with "
                    "`hubguard registry pull`, or remove the stray file.")
            live.append(seg)
        if live and live[0].first != 0:
            raise RegistryCorruptError(f"The verdict log in '{self.data_dir}' starts at row {live[0].first}, not 0: its "
                                       f"first segment is missing. Restore it with `hubguard registry pull`.")
        return live

    def stale_parts(self) -> list[Path]:
        """Segment files inside a live segment's range (left by an interrupted merge)."""
        if not self.data_dir.is_dir():
            return []
        live = {s.path.name for s in self.segments()}
        return [Path(e.path) for e in os.scandir(self.data_dir)
                if (_SEGMENT_RE.match(e.name) or e.name == LEGACY_NAME) and e.name not in live]

    def read_segment(self, seg: Segment) -> "pa.Table":
        table = schema.read_table(seg.path, columns=schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT)
        if table.num_rows != seg.rows:
            raise RegistryCorruptError(f"'{seg.path}' holds {table.num_rows} rows but its name says {seg.rows}; the verdict "
                                       "log is damaged. Restore it with `hubguard registry pull`.")
        return table

    def write_segment(self, table: "pa.Table", first: int) -> Segment:
        import pyarrow.parquet as pq

        from hubguard.utils.files import atomic_write

        seg = Segment(self.data_dir / segment_name(first, first + table.num_rows - 1), first, first + table.num_rows - 1)
        atomic_write(seg.path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS))
        return seg

    # -- index ------------------------------------------------------------------------------------------

    def index_path(self) -> Path:
        if os.access(self.registry.path, os.W_OK):  # in .cache/index/, which `registry pull` clears
            return self.registry.path / schema.CACHE_DIR / "index" / "verdicts.sqlite"
        digest = hashlib.sha1(str(self.registry.path.resolve()).encode()).hexdigest()[:16]
        return constants.HUBGUARD_CACHE / "registry-verdicts" / f"{digest}.sqlite"

    def connect(self) -> sqlite3.Connection:
        path = self.index_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # the index is derived: a lost tail is re-read from the segments
        conn.executescript(_DDL + _INDEXES)
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is None or int(version[0]) != INDEX_SCHEMA_VERSION:
            conn.executescript("DELETE FROM rows; DELETE FROM segments;")
            conn.execute("INSERT OR REPLACE INTO meta VALUES('schema_version', ?)", (str(INDEX_SCHEMA_VERSION),))
        return conn

    @staticmethod
    def _identity(seg: Segment) -> tuple[str, int, int, int, int]:
        st = seg.path.stat()
        return seg.path.name, seg.first, seg.last, st.st_size, st.st_mtime_ns

    def insert_rows(self, conn: sqlite3.Connection, table: "pa.Table", first: int, *, chunk: int = 50_000) -> None:
        """Index `table`'s rows as rows `first...` (in chunks, so a rebuild of a big log holds one chunk in memory)."""
        names = table.column_names
        quoted = ", ".join(f'"{c}"' for c in names)
        sql = f"INSERT OR REPLACE INTO rows(seq, repo_key, {quoted}) VALUES ({', '.join('?' * (len(names) + 2))})"
        for start in range(0, table.num_rows, chunk):
            cols = table.slice(start, chunk).to_pydict()
            n = len(cols[names[0]])
            conn.executemany(sql, ((first + start + i, repo_key(cols["repo_id"][i]), *(cols[c][i] for c in names))
                                   for i in range(n)))

    def record_segments(self, conn: sqlite3.Connection, segments: list[Segment]) -> None:
        conn.execute("DELETE FROM segments")
        conn.executemany("INSERT INTO segments VALUES (?, ?, ?, ?, ?)", [self._identity(s) for s in segments])

    def sync(self, conn: sqlite3.Connection) -> list[Segment]:
        """Bring the index up to date with the segment files; returns the live segments. New rows are read from
        the segments that hold them; merged segments whose rows are indexed are taken as they are; a segment
        that changed under a name the index knows (or a log that shrank) makes it rebuild from all segments."""
        for attempt in range(3):
            try:
                return self._sync_once(conn)
            except FileNotFoundError:  # a concurrent merge deleted a part between the listing and the read
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _known(self, conn: sqlite3.Connection) -> dict[str, tuple[int, int, int, int]]:
        return {r["name"]: (r["first"], r["last"], r["size"], r["mtime_ns"]) for r in conn.execute("SELECT * FROM segments")}

    def _sync_once(self, conn: sqlite3.Connection) -> list[Segment]:
        segments = self.segments()
        current = {s.path.name: self._identity(s)[1:] for s in segments}
        if self._known(conn) == current:
            return segments
        conn.execute("BEGIN IMMEDIATE")
        try:
            known = self._known(conn)
            through = conn.execute("SELECT max(seq) FROM rows").fetchone()[0]
            through = -1 if through is None else int(through)
            changed = any(name in current and current[name] != ident for name, ident in known.items())
            if changed or (segments[-1].last if segments else -1) < through:
                logger.info("rebuilding the verdict index of %s", self.registry.path)
                conn.execute("DELETE FROM rows")
                through = -1
            bulk = (segments[-1].last if segments else -1) - through > BULK_ROWS
            if bulk:
                _run_each(conn, _DROP_INDEXES)
            for seg in segments:
                if seg.last > through:
                    table = self.read_segment(seg)
                    start = max(seg.first, through + 1)
                    self.insert_rows(conn, table.slice(start - seg.first), start)
            if bulk:
                _run_each(conn, _INDEXES)
            self.record_segments(conn, segments)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return segments

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of `SELECT ... FROM rows ...` (the index brought up to date first), as dicts of the log's columns."""
        with closing(self.connect()) as conn:
            self.sync(conn)
            return [{k: (bool(r[k]) if k == "flagged" and r[k] is not None else r[k]) for k in r.keys()  # noqa: SIM118 - a Row iterates values
                     if k not in ("seq", "repo_key")} for r in conn.execute(sql, params)]

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with closing(self.connect()) as conn:
            self.sync(conn)
            return conn.execute(sql, params).fetchone()[0]

    # -- writing ----------------------------------------------------------------------------------------

    def append(self, table: "pa.Table") -> int:
        """Append rows (the caller holds the registry's write lock); returns the number of rows in the log."""
        with closing(self.connect()) as conn:
            segments = self.sync(conn)
            first = segments[-1].last + 1 if segments else 0
            seg = self.write_segment(table, first)
            segments.append(seg)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self.insert_rows(conn, table, first)
                self.record_segments(conn, segments)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self.compact(conn, segments)
            return seg.last + 1

    def compact_all(self) -> Path | None:
        """Merge every segment into one file, `data/verdicts.parquet` (for a commit that must carry the whole log in
        one file); the caller holds the registry's write lock. Returns that file (None: the log is empty)."""
        import pyarrow as pa

        with closing(self.connect()) as conn:
            segments = self.sync(conn)
            if not segments:
                return None
            target = self.data_dir / LEGACY_NAME
            if len(segments) > 1 or segments[0].path != target:
                import pyarrow.parquet as pq

                from hubguard.utils.files import atomic_write

                merged = pa.concat_tables([self.read_segment(s) for s in segments]).combine_chunks()
                atomic_write(target, lambda tmp: pq.write_table(merged, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS))
                whole = Segment(target, 0, merged.num_rows - 1)
                conn.execute("BEGIN IMMEDIATE")
                self.record_segments(conn, [whole])
                conn.execute("COMMIT")
                for seg in segments:
                    if seg.path != target:
                        seg.path.unlink(missing_ok=True)
            return target

    def compact(self, conn: sqlite3.Connection, segments: list[Segment]) -> None:
        """Merge runs of FANOUT newest segments of one tier (cascading), then delete the parts."""
        import pyarrow as pa

        while len(segments) >= FANOUT and len({s.tier for s in segments[-FANOUT:]}) == 1:
            parts = segments[-FANOUT:]
            merged = pa.concat_tables([self.read_segment(s) for s in parts]).combine_chunks()
            seg = self.write_segment(merged, parts[0].first)
            segments = [*segments[:-FANOUT], seg]
            conn.execute("BEGIN IMMEDIATE")
            self.record_segments(conn, segments)
            conn.execute("COMMIT")
            for part in parts:
                part.path.unlink(missing_ok=True)
        for stale in self.stale_parts():
            stale.unlink(missing_ok=True)
