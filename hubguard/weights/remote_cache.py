"""On-disk cache of byte ranges fetched from Hub repos, so re-fingerprinting a repo costs no requests.

Entries are keyed by (repo_id, commit sha, file, byte range). A commit sha names immutable content, so an
entry never goes stale. Layout (the `v1` folder is the schema version)::

    {root}/v1/{repo_id with '/' -> '--'}/{sha}/{file, percent-quoted}/{start}-{stop}.bin
    {root}/v1/{repo_id with '/' -> '--'}/{sha}/listing.json      # file sizes at that commit

Entries are written atomically (a temporary file in the same folder, then `os.replace`) and only by the caller
after a complete, verified read; an entry whose size does not match its name is ignored and removed, so a
partial file can never be served as complete.

The cache has a size cap (`HUBGUARD_REMOTE_CACHE_MAX_BYTES`, default 2 GiB; `set_max_bytes` overrides it for a
process): a hit marks its file as used (its mtime), and a write that takes the total over the cap evicts the
least recently used files down to 90% of it. Each process keeps its own account of the folder, rescanned every
`RESCAN_EVERY` writes and before evicting, so files other processes wrote are counted too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote

from hubguard import constants
from hubguard.utils import get_logger
from hubguard.utils.files import atomic_write_bytes

logger = get_logger(__name__)

CACHE_SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 2 << 30
RESCAN_EVERY = 256
_SPAN_RE = re.compile(r"^(\d+)-(\d+)\.bin$")
_max_bytes_override: int | None = None


def set_max_bytes(value: int | None) -> None:
    """Cap the cache at `value` bytes in this process (None: back to HUBGUARD_REMOTE_CACHE_MAX_BYTES / 2 GiB)."""
    global _max_bytes_override
    _max_bytes_override = None if value is None else max(0, int(value))


def max_bytes() -> int:
    return _max_bytes_override if _max_bytes_override is not None else constants.remote_cache_max_bytes(DEFAULT_MAX_BYTES)


class CacheBudget:
    """The files of one cache root in least-recently-used order, their total size, and eviction."""

    _budgets: dict[Path, "CacheBudget"] = {}
    _budgets_lock = threading.Lock()

    @classmethod
    def of(cls, root: Path) -> "CacheBudget":
        key = Path(root).expanduser().absolute()
        with cls._budgets_lock:
            if key not in cls._budgets:
                cls._budgets[key] = cls(key)
            return cls._budgets[key]

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._files: OrderedDict[Path, int] = OrderedDict()
        self.total = 0
        self._writes = 0
        self._scanned = False
        self.evicted = 0

    def _scan(self) -> None:
        """Read the folder: every entry with its size, oldest use (mtime) first."""
        found: list[tuple[int, Path, int]] = []
        base = self.root / f"v{CACHE_SCHEMA_VERSION}"
        for dirpath, _, names in os.walk(base):
            for name in names:
                if name.endswith(".bin") or name == "listing.json":
                    path = Path(dirpath) / name
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    found.append((st.st_mtime_ns, path, st.st_size))
        found.sort(key=lambda t: t[0])
        self._files = OrderedDict((p, size) for _, p, size in found)
        self.total = sum(self._files.values())
        self._scanned = True

    def used(self, path: Path) -> None:
        """A hit: `path` becomes the most recently used file."""
        with self._lock:
            if path in self._files:
                self._files.move_to_end(path)
        with contextlib.suppress(OSError):
            os.utime(path)

    def added(self, path: Path, size: int) -> None:
        """A new entry was written; evict if the cache is now over its cap."""
        cap = max_bytes()
        with self._lock:
            if not self._scanned or self._writes % RESCAN_EVERY == 0:
                self._scan()
            self._writes += 1
            self.total += size - self._files.pop(path, 0)
            self._files[path] = size
            if self.total <= cap:
                return
            self._scan()  # count what other processes wrote before deleting anything
            target = int(cap * 0.9)
            for victim in list(self._files):  # oldest use first
                if self.total <= target:
                    break
                if victim == path:
                    continue
                self.total -= self._files.pop(victim)
                victim.unlink(missing_ok=True)
                self.evicted += 1


def default_cache_root() -> Path | None:
    """`$HUBGUARD_REMOTE_CACHE` (read now, so tests can set it), else `HUBGUARD_CACHE/remote`. "off" disables it."""
    value = constants.remote_cache_setting()
    if value is not None and value.strip().lower() in {"", "0", "off", "false", "no", "none"}:
        return None
    return Path(value).expanduser() if value else constants.HUBGUARD_CACHE / "remote"


class RangeCache:
    """Byte ranges of the files of one repo commit. Not safe to share across processes mid-write, but every write
    is atomic, so concurrent readers only ever see complete entries."""

    def __init__(self, *, root: Path, repo_id: str, sha: str) -> None:
        self.dir = Path(root) / f"v{CACHE_SCHEMA_VERSION}" / repo_id.replace("/", "--") / sha
        self._spans: dict[str, list[tuple[int, int]]] = {}
        self.budget = CacheBudget.of(Path(root))

    def _file_dir(self, file: str) -> Path:
        return self.dir / quote(file, safe="")

    def spans(self, file: str) -> list[tuple[int, int]]:
        """Cached `[start, stop)` spans of `file` (read from disk once, then kept up to date)."""
        if file not in self._spans:
            found: list[tuple[int, int]] = []
            d = self._file_dir(file)
            if d.is_dir():
                for p in d.iterdir():
                    m = _SPAN_RE.match(p.name)
                    if m is None:
                        continue
                    start, stop = int(m.group(1)), int(m.group(2))
                    if p.stat().st_size == stop - start:
                        found.append((start, stop))
                    else:  # never serve a file whose size does not match its name
                        logger.warning("Removing a damaged cache entry %s", p)
                        p.unlink(missing_ok=True)
            self._spans[file] = sorted(found)
        return self._spans[file]

    def lookup(self, file: str, start: int, stop: int) -> bytes | None:
        """The bytes `[start, stop)` of `file` if one cached span holds all of them, else None."""
        for s, e in self.spans(file):
            if s <= start and stop <= e:
                path = self._file_dir(file) / f"{s}-{e}.bin"
                try:
                    with path.open("rb") as fh:
                        fh.seek(start - s)
                        data = fh.read(stop - start)
                except FileNotFoundError:  # evicted (by us or another process)
                    self._spans[file].remove((s, e))
                    return None
                if len(data) == stop - start:
                    self.budget.used(path)
                    return data
        return None

    def store(self, file: str, start: int, data: bytes) -> None:
        """Record a complete, verified read of `[start, start + len(data))`."""
        stop = start + len(data)
        if len(data) > max_bytes():
            return  # larger than the whole cache: not worth evicting everything for
        path = self._file_dir(file) / f"{start}-{stop}.bin"
        try:
            atomic_write_bytes(path, data, fsync=False)
        except OSError as err:  # a full or read-only disk must not break a fingerprint
            logger.warning("Could not write the remote cache under %s (%s); continuing without it.", self.dir, err)
            return
        self.budget.added(path, len(data))
        spans = self.spans(file)
        if (start, stop) not in spans:
            spans.append((start, stop))
            spans.sort()

    # -- listing -------------------------------------------------------------------------------------

    def load_listing(self) -> dict[str, int | None] | None:
        try:
            data = json.loads((self.dir / "listing.json").read_text())
            return {str(k): (int(v) if v is not None else None) for k, v in data["files"].items()}
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None

    def save_listing(self, files: dict[str, int | None]) -> None:
        body = json.dumps({"schema_version": CACHE_SCHEMA_VERSION, "files": files}, sort_keys=True).encode()
        try:
            atomic_write_bytes(self.dir / "listing.json", body, fsync=False)
        except OSError as err:
            logger.warning("Could not write the remote cache under %s (%s); continuing without it.", self.dir, err)
            return
        self.budget.added(self.dir / "listing.json", len(body))
