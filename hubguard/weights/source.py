"""Open a weight source by its user-facing spec: a folder, a `.safetensors` file, or `hf://ORG/NAME[@REV]`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from hubguard.weights.safetensors import SafetensorsCheckpoint, read_json
from hubguard.weights.store import ByteStore, LocalStore

HF_PREFIX = "hf://"


@dataclass(frozen=True)
class HubRef:
    """A parsed `hf://ORG/NAME[@REVISION]` spec."""

    repo_id: str
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "HubRef":
        from hubguard.errors import SourceError

        body = spec[len(HF_PREFIX) :] if spec.startswith(HF_PREFIX) else spec
        repo, _, rev = body.partition("@")
        parts = repo.strip("/").split("/")
        if len(parts) != 2 or not all(parts):
            raise SourceError(f"'{spec}' is not a Hub source. Write hf://ORG/NAME or hf://ORG/NAME@REVISION.")
        return cls(repo_id="/".join(parts), revision=rev or None)


class Checkpoint:
    """A weight source opened for reading: its store, tensors, config and tokenizer files."""

    def __init__(self, *, store: ByteStore, allow_pickle: bool = False, source: str | None = None) -> None:
        self.store = store
        self.source = source or store.name
        self.tensors = SafetensorsCheckpoint(store=store, allow_pickle=allow_pickle)

    @cached_property
    def config(self) -> dict[str, Any]:
        """`config.json` (empty dict when absent)."""
        return read_json(self.store, "config.json") or {}

    @property
    def stats(self):  # noqa: ANN201 - ReadStats
        return self.store.stats

    def __repr__(self) -> str:
        return f"Checkpoint({self.source!r})"


def open_store(source: str | os.PathLike[str], *, token: str | None = None) -> ByteStore:
    """The bytes of `source` (folder, `.safetensors` file or `hf://ORG/NAME[@REV]`), nothing read yet."""
    spec = os.fspath(source)
    if spec.startswith(HF_PREFIX):
        from hubguard.weights.remote import HubStore

        ref = HubRef.parse(spec)
        return HubStore(repo_id=ref.repo_id, revision=ref.revision, token=token)
    return LocalStore(spec)


def open_source(source: str | os.PathLike[str], *, allow_pickle: bool = False, token: str | None = None) -> Checkpoint:
    """Open `source` (folder, `.safetensors` file or `hf://ORG/NAME[@REV]`): its headers, no weights yet.
    Pickle files are only ever read from local folders."""
    spec = os.fspath(source)
    store = open_store(spec, token=token)
    return Checkpoint(store=store, allow_pickle=allow_pickle and isinstance(store, LocalStore), source=spec)
