"""Atomic file writes: write a temporary file next to the target, fsync it, then rename it into place.

Readers (which take no lock) always see either the previous or the next complete file, and a writer killed
mid-write leaves the previous file. Every file hubguard writes goes through `atomic_write`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: "str | os.PathLike[str]", write: Callable[[Path], None], *, fsync: bool = True,
                 mode: int | None = 0o644) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then move it over `path`. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: "str | os.PathLike[str]", data: bytes, *, fsync: bool = True) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(path: "str | os.PathLike[str]", text: str, *, fsync: bool = True) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def atomic_write_json(path: "str | os.PathLike[str]", data: Any, *, fsync: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n", fsync=fsync)
