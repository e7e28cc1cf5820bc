"""On-disk cache of byte ranges fetched from Hub repos, so re-fingerprinting a repo costs no requests.

Entries are keyed by (repo_id, commit sha, file, byte range). A commit sha names immutable content, so an
entry never goes stale. Layout (the `v1` folder is the schema version)::

    {root}/v1/{repo_id with '/' -> '--'}/{sha}/{file, percent-quoted}/{start}-{stop}.bin
    {root}/v1/{repo_id with '/' -> '--'}/{sha}/listing.json      # file sizes at that commit

Entries are written atomically (a temporary file in the same folder, then `os.replace`) and only by the caller
after a complete, verified read; an entry whose size does not match its name is ignored and removed, so a
partial file can never be served as complete.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

from hubguard import constants
from hubguard.utils import get_logger
from hubguard.utils.files import atomic_write_bytes

logger = get_logger(__name__)

CACHE_SCHEMA_VERSION = 1
_SPAN_RE = re.compile(r"^(\d+)-(\d+)\.bin$")


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
                except FileNotFoundError:
                    self._spans[file].remove((s, e))
                    return None
                if len(data) == stop - start:
                    return data
        return None

    def store(self, file: str, start: int, data: bytes) -> None:
        """Record a complete, verified read of `[start, start + len(data))`."""
        stop = start + len(data)
        try:
            atomic_write_bytes(self._file_dir(file) / f"{start}-{stop}.bin", data, fsync=False)
        except OSError as err:  # a full or read-only disk must not break a fingerprint
            logger.warning("Could not write the remote cache under %s (%s); continuing without it.", self.dir, err)
            return
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
