"""Byte stores: where checkpoint bytes come from.

A `ByteStore` answers "give me these byte ranges of this file". Everything above it (safetensors header
parsing, tensor and row reads, tokenizer files) is shared between local files and remote repos, so the
two give bit-identical fingerprints. Stores count the bytes and requests they serve.

Implementations: `LocalStore` (a folder or one file, read with `os.pread`) here, and the HTTP Range
store for `hf://` repos in `hubguard.weights.remote`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from hubguard.errors import CorruptCheckpointError, SourceNotFoundError


@dataclass
class ReadStats:
    """Bytes and requests served by a store (for benchmarks and the reading budget)."""

    bytes_read: int = 0
    requests: int = 0
    files: dict[str, int] = field(default_factory=dict)

    def add(self, *, file: str, nbytes: int, requests: int = 1) -> None:
        self.bytes_read += nbytes
        self.requests += requests
        self.files[file] = self.files.get(file, 0) + nbytes


@runtime_checkable
class ByteStore(Protocol):
    """The interface a weight location implements."""

    #: A human-readable name of the location ("/path/to/folder", "hf://org/name@sha").
    name: str
    stats: ReadStats

    def list_files(self) -> list[str]:
        """Relative paths of all files (POSIX separators)."""
        ...

    def size(self, file: str) -> int:
        """Size of `file` in bytes. Raises SourceNotFoundError if it does not exist."""
        ...

    def read_ranges(self, file: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Read `[start, stop)` byte ranges of `file`; returns one bytes object per range, in order.

        Implementations may coalesce nearby ranges into fewer requests.
        """
        ...

    def read_text(self, file: str) -> str | None:
        """Whole small text file (config, tokenizer), or None if it does not exist."""
        ...


class LocalStore:
    """A local folder, or a single `.safetensors` file (then the store holds just that file)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path).expanduser()
        if not path.exists():
            raise SourceNotFoundError(
                f"'{path}' does not exist. Pass a model folder, a .safetensors file or hf://ORG/NAME."
            )
        if path.is_file():
            self.root = path.parent
            self._only: str | None = path.name
        else:
            self.root = path
            self._only = None
        self.name = str(path)
        self.stats = ReadStats()

    def _path(self, file: str) -> Path:
        p = (self.root / file).resolve()
        if self.root.resolve() not in p.parents and p != self.root.resolve():
            raise SourceNotFoundError(f"'{file}' points outside of '{self.root}'. Refusing to read it.")
        return p

    def list_files(self) -> list[str]:
        if self._only is not None:
            return [self._only]
        out = []
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and ".git" not in p.relative_to(self.root).parts:
                out.append(p.relative_to(self.root).as_posix())
        return out

    def size(self, file: str) -> int:
        p = self._path(file)
        if not p.is_file():
            raise SourceNotFoundError(f"'{p}' is missing. The checkpoint folder looks incomplete.")
        return p.stat().st_size

    def read_ranges(self, file: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        p = self._path(file)
        size = self.size(file)
        out: list[bytes] = []
        fd = os.open(p, os.O_RDONLY)
        try:
            for start, stop in ranges:
                if start < 0 or stop < start or stop > size:
                    raise CorruptCheckpointError(
                        f"'{p}' is {size} bytes but bytes [{start}, {stop}) were asked for: the file is "
                        "truncated or its header lies about tensor offsets. Re-download or re-save it."
                    )
                chunks = []
                pos, left = start, stop - start
                while left > 0:
                    chunk = os.pread(fd, min(left, 1 << 26), pos)
                    if not chunk:
                        raise CorruptCheckpointError(f"'{p}' ended early at byte {pos} (truncated file).")
                    chunks.append(chunk)
                    pos += len(chunk)
                    left -= len(chunk)
                out.append(b"".join(chunks))
                self.stats.add(file=file, nbytes=stop - start)
        finally:
            os.close(fd)
        return out

    def read_text(self, file: str) -> str | None:
        p = self.root / file
        if not p.is_file():
            return None
        try:
            return p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise CorruptCheckpointError(f"'{p}' is not UTF-8 text ({err}). Replace it with a valid file.") from err


def coalesce_ranges(ranges: list[tuple[int, int]], *, max_gap: int) -> list[tuple[int, int]]:
    """Merge sorted-or-not ranges whose gap is at most `max_gap` bytes. Returns sorted merged ranges."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and start - merged[-1][1] <= max_gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged
