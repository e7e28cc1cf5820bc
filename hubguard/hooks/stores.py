"""Byte stores over exactly what a push or an upload sends, so the check judges those bytes and nothing else.

- `GitTreeStore`: the files of one git tree — a pushed commit's, or the index's (`git write-tree`) for a
  pre-commit hook. Blobs come from git's object database; a Git LFS pointer is resolved to the object in the
  local LFS store (`.git/lfs/objects/..`, or `lfs.storage`), or fails saying to run `git lfs fetch`. The working
  folder is never read: a model card present only on disk, or deleted in the commit, counts as what the commit has.
- `SelectedFilesStore`: a folder restricted to the files `upload_folder` will send after its allow/ignore patterns
  (`upload_plan` applies huggingface_hub's own `filter_repo_objects` and default ignore patterns).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hubguard.errors import CorruptCheckpointError, HookError, SourceNotFoundError
from hubguard.weights.store import LocalStore, ReadStats

LFS_POINTER_MAX_BYTES = 1024  # git-lfs never writes a larger pointer file
IN_MEMORY_BLOB_BYTES = 8 << 20  # larger plain blobs are spooled to a temporary file, then read with pread
_LFS_VERSION = "version https://git-lfs.github.com/spec/v1"
_LFS_OID_RE = re.compile(r"^oid sha256:([0-9a-f]{64})$")
_LFS_SIZE_RE = re.compile(r"^size (\d{1,20})$")
_FETCH_FIX = "Run `git lfs fetch` (or `git lfs pull`) so the LFS objects of this commit are in the local LFS store, then push again."


def git(repo_dir: "str | os.PathLike[str]", *args: str, input_bytes: bytes | None = None) -> bytes:
    """Run `git -C repo_dir ARGS`; a failure is a HookError that quotes git's message."""
    try:
        done = subprocess.run(["git", "-C", os.fspath(repo_dir), *args], input=input_bytes, capture_output=True,
                              check=False)
    except FileNotFoundError:
        raise HookError("git is not installed (or not on PATH). Install git to use the git hooks.") from None
    if done.returncode != 0:
        msg = done.stderr.decode("utf-8", "replace").strip() or f"exit code {done.returncode}"
        raise HookError(f"`git {' '.join(args)}` failed in '{repo_dir}': {msg}")
    return done.stdout


@dataclass(frozen=True)
class LfsPointer:
    oid: str
    size: int


def parse_lfs_pointer(data: bytes) -> LfsPointer | None:
    """The pointer a small blob holds, or None when the blob is ordinary content."""
    if len(data) > LFS_POINTER_MAX_BYTES or not data.startswith(_LFS_VERSION.encode()):
        return None
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        return None
    oid = next((m.group(1) for line in lines if (m := _LFS_OID_RE.match(line))), None)
    size = next((int(m.group(1)) for line in lines if (m := _LFS_SIZE_RE.match(line))), None)
    return LfsPointer(oid, size) if oid is not None and size is not None else None


@dataclass(frozen=True)
class _TreeEntry:
    oid: str
    size: int


class GitTreeStore:
    """The files of the git tree `treeish` (a commit, a ref, or a tree id) of the repository at `repo_dir`."""

    def __init__(self, *, repo_dir: "str | os.PathLike[str]", treeish: str, name: str | None = None) -> None:
        self.repo_dir = Path(repo_dir)
        self.treeish = treeish
        self.name = name or f"{self.repo_dir}@{treeish[:12]}"
        self.stats = ReadStats()
        self._entries = self._list_tree()
        self._pointers: dict[str, LfsPointer | None] = {}
        self._small: dict[str, bytes] = {}
        self._spooled: dict[str, Path] = {}
        self._tmp: Path | None = None
        self._lfs_root: Path | None = None

    def _list_tree(self) -> dict[str, _TreeEntry]:
        out: dict[str, _TreeEntry] = {}
        for record in git(self.repo_dir, "ls-tree", "-r", "-l", "-z", "--full-tree", self.treeish).split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, kind, oid, size = meta.decode().split()
            if kind != "blob" or mode == "120000":  # submodules and symlinks carry no bytes of their own
                continue
            out[path.decode("utf-8", "surrogateescape")] = _TreeEntry(oid=oid, size=int(size))
        return out

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._spooled.clear()

    def __del__(self) -> None:  # the spool folder must not outlive the store
        self.close()

    # -- LFS ---------------------------------------------------------------------------------------

    def _entry(self, file: str) -> _TreeEntry:
        entry = self._entries.get(file)
        if entry is None:
            raise SourceNotFoundError(f"'{file}' is not in {self.name}. The commit does not contain it.")
        return entry

    def _pointer(self, file: str) -> LfsPointer | None:
        if file not in self._pointers:
            entry = self._entry(file)
            small = self._blob(entry.oid) if entry.size <= LFS_POINTER_MAX_BYTES else None
            self._pointers[file] = parse_lfs_pointer(small) if small is not None else None
            if small is not None and self._pointers[file] is None:
                self._small[file] = small
        return self._pointers[file]

    def lfs_storage(self) -> Path:
        """The LFS store of the repository: `lfs.storage` (relative to the git folder) or `<git-common-dir>/lfs`;
        worktrees share their main repository's store."""
        if self._lfs_root is None:
            storage = git(self.repo_dir, "config", "--default", "", "--get", "lfs.storage").decode().strip()
            common = Path(git(self.repo_dir, "rev-parse", "--git-common-dir").decode().strip())
            if not common.is_absolute():
                common = self.repo_dir / common
            self._lfs_root = Path(storage) if os.path.isabs(storage) else common / (storage or "lfs")
        return self._lfs_root

    def lfs_object(self, file: str, pointer: LfsPointer) -> Path:
        """The local LFS object a pointer names; a missing one is a SourceNotFoundError whose fix says to fetch it."""
        root = self.lfs_storage()
        path = root / "objects" / pointer.oid[:2] / pointer.oid[2:4] / pointer.oid
        if not path.is_file():
            raise SourceNotFoundError(
                f"'{file}' in {self.name} is a Git LFS pointer (oid {pointer.oid[:12]}…, {pointer.size:,} bytes) whose "
                f"object is not in the local LFS store ({root / 'objects'}), so its content cannot be checked: run "
                "`git lfs fetch`.",
                fix=_FETCH_FIX)
        if path.stat().st_size != pointer.size:
            raise CorruptCheckpointError(
                f"The local LFS object of '{file}' ({path}) has {path.stat().st_size:,} bytes, but the pointer in "
                f"{self.name} says {pointer.size:,}. The LFS store is damaged: run `git lfs fsck`.",
                fix="Run `git lfs fsck` and `git lfs fetch` to repair the LFS store, then push again.")
        return path

    # -- blobs -------------------------------------------------------------------------------------

    def _blob(self, oid: str) -> bytes:
        data = git(self.repo_dir, "cat-file", "blob", oid)
        self.stats.add(file=oid, nbytes=len(data))
        return data

    def _local_path(self, file: str) -> Path | None:
        """A file on disk holding `file`'s bytes (an LFS object or a spooled big blob); None for small blobs."""
        pointer = self._pointer(file)
        if pointer is not None:
            return self.lfs_object(file, pointer)
        if file in self._small:
            return None
        if file not in self._spooled:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="hubguard-git-"))
            target = self._tmp / f"{len(self._spooled)}.blob"
            with target.open("wb") as out:
                done = subprocess.run(["git", "-C", os.fspath(self.repo_dir), "cat-file", "blob", self._entry(file).oid],
                                      stdout=out, stderr=subprocess.PIPE, check=False)
            if done.returncode != 0:
                raise HookError(f"git could not read '{file}' of {self.name}: {done.stderr.decode(errors='replace')}")
            self._spooled[file] = target
        return self._spooled[file]

    # -- ByteStore ---------------------------------------------------------------------------------

    def list_files(self) -> list[str]:
        return sorted(self._entries)

    def size(self, file: str) -> int:
        pointer = self._pointer(file)
        return pointer.size if pointer is not None else self._entry(file).size

    def read_ranges(self, file: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        size = self.size(file)
        for start, stop in ranges:
            if start < 0 or stop < start or stop > size:
                raise CorruptCheckpointError(
                    f"'{self.name}/{file}' is {size} bytes but bytes [{start}, {stop}) were asked for: the file is "
                    "truncated or its header lies about tensor offsets. Re-save the model and commit it again.")
        path = self._local_path(file)
        if path is None:
            data = self._small[file]
            return [data[a:b] for a, b in ranges]
        out = LocalStore(path).read_ranges(path.name, ranges)
        for a, b in ranges:
            self.stats.add(file=file, nbytes=b - a)
        return out

    def read_text(self, file: str) -> str | None:
        if file not in self._entries:
            return None
        data = self.read_ranges(file, [(0, self.size(file))])[0]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorruptCheckpointError(f"'{self.name}/{file}' is not UTF-8 text ({err}). Fix the file and commit it.") from err


class SelectedFilesStore(LocalStore):
    """A folder, restricted to `files` (relative POSIX paths): anything else reads as absent."""

    def __init__(self, folder: "str | os.PathLike[str]", *, files: list[str], name: str | None = None) -> None:
        super().__init__(folder)
        if self._only is not None:
            raise HookError(f"'{folder}' is a file; pass the folder you upload.")
        self._selected = sorted(set(files))
        self._allowed = set(self._selected)
        self.name = name or self.name

    def list_files(self) -> list[str]:
        return list(self._selected)

    def _path(self, file: str) -> Path:
        if file not in self._allowed:
            raise SourceNotFoundError(f"'{file}' is not among the files that will be uploaded from '{self.root}'.")
        return super()._path(file)

    def read_text(self, file: str) -> str | None:
        if file not in self._allowed:
            return None
        self._path(file)  # refuses a link that points outside the folder
        return super().read_text(file)


def upload_plan(folder: "str | os.PathLike[str]", *, allow_patterns: list[str] | None = None,
                ignore_patterns: list[str] | None = None) -> list[str]:
    """The files (relative POSIX paths) `HfApi.upload_folder(folder, allow_patterns=..., ignore_patterns=...)`
    would send: every file under `folder`, filtered by huggingface_hub's own `filter_repo_objects`, with its
    default ignore patterns (`.git/`, `.cache/huggingface/`) added as upload_folder adds them."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise HookError(f"'{folder}' is not a folder. `hubguard upload` takes the model folder to upload.")
    files = [p.relative_to(root).as_posix() for p in sorted(root.glob("**/*")) if p.is_file()]
    ignore = [*(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS]
    return list(filter_repo_objects(files, allow_patterns=allow_patterns or None, ignore_patterns=ignore))
