"""Byte stores: where checkpoint bytes come from.

A `ByteStore` answers "give me these byte ranges of this file". Everything above it (safetensors header
parsing, tensor and row reads, tokenizer files) is shared between local files and remote repos, so the
two give bit-identical fingerprints. Stores count the bytes and requests they serve.

Implementations: `LocalStore` (a folder or one file, read with `os.pread`) and `SubStore` (a sub-folder of another
store seen as a store of its own: a sentence-transformers module) here, and the HTTP Range store for `hf://` repos
in `hubguard.weights.remote`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from hubguard.errors import CorruptCheckpointError, SourceNotFoundError

MAX_TEXT_BYTES = 256 * 1024 * 1024  # the largest text file (config, tokenizer, index) any store reads whole


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

    @property
    def single_file(self) -> str | None:
        """The file's name when this store is one file (then that file is the weights, whatever its name)."""
        return self._only

    def path(self, file: str) -> Path:
        """The local path of `file`, refusing paths (or symlinks) that lead outside the store's folder."""
        return self._path(file)

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
        p = self._path(file)
        if not p.is_file():  # a one-file store still reads the config and tokenizer beside the file
            return None
        if p.stat().st_size > MAX_TEXT_BYTES:
            raise CorruptCheckpointError(f"'{p}' is {p.stat().st_size:,} bytes, too large for a text file (limit "
                                         f"{MAX_TEXT_BYTES:,}). Replace it with the model's own file.")
        try:
            return p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorruptCheckpointError(f"'{p}' is not UTF-8 text ({err}). Replace it with a valid file.") from err


class SubStore:
    """The files under `folder/` of another store, seen as a store of their own (names relative to the folder).
    Reads and their counts go to the parent store."""

    def __init__(self, parent: ByteStore, folder: str) -> None:
        self.parent = parent
        self.folder = folder.strip("/")
        self.name = f"{parent.name}/{self.folder}"

    @property
    def stats(self) -> ReadStats:
        return self.parent.stats

    def _full(self, file: str) -> str:
        return f"{self.folder}/{file}"

    def list_files(self) -> list[str]:
        prefix = self.folder + "/"
        return [f[len(prefix):] for f in self.parent.list_files() if f.startswith(prefix)]

    def size(self, file: str) -> int:
        return self.parent.size(self._full(file))

    def read_ranges(self, file: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        return self.parent.read_ranges(self._full(file), ranges)

    def read_text(self, file: str) -> str | None:
        return self.parent.read_text(self._full(file))

    def __getattr__(self, attr: str):  # noqa: ANN204 - sha, revision, repo_id of a remote parent
        return getattr(self.parent, attr)


def coalesce_ranges(ranges: list[tuple[int, int]], *, max_gap: int) -> list[tuple[int, int]]:
    """Merge sorted-or-not ranges whose gap is at most `max_gap` bytes. Returns sorted merged ranges."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and start - merged[-1][1] <= max_gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


class FallbackStore:
    """A store whose text files (tokenizer, config) fall back to another store's: an adapter folder without a
    tokenizer of its own reads its base's. Byte ranges, listing and identity are the primary store's."""

    def __init__(self, primary: ByteStore, fallback: ByteStore) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.stats = primary.stats

    def list_files(self) -> list[str]:
        return self.primary.list_files()

    def size(self, file: str) -> int:
        return self.primary.size(file)

    def read_ranges(self, file: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        return self.primary.read_ranges(file, ranges)

    def read_text(self, file: str) -> str | None:
        text = self.primary.read_text(file)
        return text if text is not None else self.fallback.read_text(file)

    def __getattr__(self, attr: str):  # noqa: ANN204 - sha, revision, repo_id of a remote primary
        return getattr(self.primary, attr)
