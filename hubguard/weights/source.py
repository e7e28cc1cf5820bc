"""Open a weight source by its user-facing spec: a folder, a `.safetensors` file, or `hf://ORG/NAME[@REV]`.

A `Checkpoint` holds exactly the tensors transformers would load from it (`hubguard.weights.files`): safetensors
files, pickles (only with allow_pickle, read with weights_only=True), or a PEFT adapter on its base. Files that
hold weights but are not loaded are its `shadow` files; opening logs a warning naming them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hubguard.errors import BaseModelUnavailableError, SourceError, UnsupportedAdapterError
from hubguard.utils import get_logger
from hubguard.weights.files import MAX_SMALL_JSON_BYTES, WeightFiles, read_json, weight_files
from hubguard.weights.store import ByteStore, FallbackStore, LocalStore, ReadStats, SubStore
from hubguard.weights.tensors import TensorSource

logger = get_logger(__name__)

HF_PREFIX = "hf://"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
UNAVAILABLE = "unverifiable: base not available"


@dataclass(frozen=True)
class HubRef:
    """A parsed `hf://ORG/NAME[@REVISION]` spec."""

    repo_id: str
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "HubRef":
        body = spec[len(HF_PREFIX) :] if spec.startswith(HF_PREFIX) else spec
        repo, _, rev = body.partition("@")
        parts = repo.strip("/").split("/")
        if len(parts) != 2 or not all(parts):
            raise SourceError(f"'{spec}' is not a Hub source. Write hf://ORG/NAME or hf://ORG/NAME@REVISION.")
        return cls(repo_id="/".join(parts), revision=rev or None)


class Checkpoint:
    """A weight source opened for reading: its store, the tensors transformers loads from it, config, tokenizer.

    Args:
        store: the repo or folder.
        allow_pickle: read pickle weights with torch.load(weights_only=True) (local folders only).
        source: the spec it was opened from (for messages).
        base: for a PEFT adapter, the base to put it on (a folder or hf://ORG/NAME); default: the
            `base_model_name_or_path` of adapter_config.json.
        token: Hub token, also for the base of an adapter.
        variant: transformers' `variant=` (model.{variant}.safetensors).
    """

    def __init__(self, *, store: ByteStore, allow_pickle: bool = False, source: str | None = None,
                 base: "str | os.PathLike[str] | None" = None, token: str | None = None,
                 variant: str | None = None) -> None:
        self.root = store
        self.source = source or store.name
        self.layout: WeightFiles = weight_files(store=store, variant=variant)
        self.store: ByteStore = SubStore(store, self.layout.folder) if self.layout.folder else store
        self.base: Checkpoint | None = None
        if self.layout.shadow:
            logger.warning("%s: weight files that transformers does not load, so hubguard does not fingerprint them: %s",
                           self.source, "; ".join(f"{s.file} ({s.reason})" for s in self.layout.shadow))
        if self.layout.adapter is not None and not self.layout.adapter.embedded:
            self.base = open_adapter_base(self, base=base, allow_pickle=allow_pickle, token=token)
            self.store = FallbackStore(self.store, self.base.store)
            own: TensorSource = self.base.tensors
        else:
            own = _tensors(store, self.layout.files, self.layout.format, allow_pickle=allow_pickle)
        self.tensors: TensorSource = own if self.layout.adapter is None else _overlay(self, own, allow_pickle)

    @property
    def shadow(self) -> list[dict[str, str]]:
        """The weight files present but not loaded (file, reason)."""
        return [s.to_dict() for s in self.layout.shadow]

    @property
    def adapter_base(self) -> str | None:
        """The base an adapter declares (adapter_config.json's base_model_name_or_path), if this is an adapter."""
        return self.layout.adapter.base if self.layout.adapter is not None else None

    @cached_property
    def config(self) -> dict[str, Any]:
        """`config.json` of the model's folder (empty dict when absent); an adapter's is its base's."""
        if self.base is not None:
            return self.base.config
        return read_json(self.store, "config.json") or {}

    @property
    def stats(self) -> ReadStats:
        if self.base is None:
            return self.store.stats
        own, base = self.root.stats, self.base.stats
        return ReadStats(bytes_read=own.bytes_read + base.bytes_read, requests=own.requests + base.requests,
                         files={**base.files, **own.files})

    def __repr__(self) -> str:
        return f"Checkpoint({self.source!r})"


def _tensors(store: ByteStore, files: tuple[str, ...], fmt: str | None, *, allow_pickle: bool) -> TensorSource:
    from hubguard.weights.pickles import PickleCheckpoint, refuse_pickles
    from hubguard.weights.safetensors import SafetensorsCheckpoint

    if fmt == "pickle":
        if not allow_pickle and isinstance(store, LocalStore):
            raise refuse_pickles(store=store, files=files)
        return PickleCheckpoint(store=store, files=files)  # refuses remote pickles, saying what to do
    return SafetensorsCheckpoint(store=store, files=files)


def _overlay(checkpoint: Checkpoint, base: TensorSource, allow_pickle: bool) -> TensorSource:
    from hubguard.weights.adapters import LoraOverlay, parse_lora_config

    adapter = checkpoint.layout.adapter
    assert adapter is not None
    where = f"{checkpoint.root.name}/{adapter.config_file}"
    config = parse_lora_config(read_json(checkpoint.root, adapter.config_file, max_bytes=MAX_SMALL_JSON_BYTES) or {},
                               where=where)
    fmt = "safetensors" if adapter.weights_file.endswith(".safetensors") else "pickle"
    weights = _tensors(checkpoint.root, (adapter.weights_file,), fmt, allow_pickle=allow_pickle)
    return LoraOverlay(base=base, adapter=weights, config=config, where=f"{checkpoint.root.name}/{adapter.weights_file}")


def base_spec(checkpoint: Checkpoint, *, base: "str | os.PathLike[str] | None") -> str:
    """Where an adapter's base is read from: `base` when given, else what adapter_config.json names — a Hub repo id
    (read as hf://ID), or, for a local adapter only, an existing local folder. Never a local path a remote repo names."""
    if base is not None:
        return os.fspath(base)
    adapter = checkpoint.layout.adapter
    assert adapter is not None
    name = adapter.base
    where = f"{checkpoint.source}/{adapter.config_file}"
    if name is None:
        raise BaseModelUnavailableError(f"{UNAVAILABLE}: '{where}' names no base_model_name_or_path, so hubguard does "
                                        "not know which model the adapter goes on.")
    if isinstance(checkpoint.root, LocalStore) and Path(name).expanduser().is_dir():
        return name
    if _REPO_ID.match(name.removeprefix(HF_PREFIX).partition("@")[0]):
        return name if name.startswith(HF_PREFIX) else HF_PREFIX + name
    raise BaseModelUnavailableError(f"{UNAVAILABLE}: '{where}' names the base {name[:200]!r}, which is neither a Hub "
                                    "repo id (ORG/NAME) nor " + ("a local folder." if isinstance(checkpoint.root, LocalStore)
                                                                else "readable from a Hub repo (local paths are not followed)."))


def open_adapter_base(checkpoint: Checkpoint, *, base: "str | os.PathLike[str] | None", allow_pickle: bool,
                      token: str | None) -> Checkpoint:
    """The base checkpoint of an adapter (BaseModelUnavailableError, saying what to pass, when it cannot be read)."""
    spec = base_spec(checkpoint, base=base)
    try:
        opened = open_source(spec, allow_pickle=allow_pickle, token=token)
    except BaseModelUnavailableError:
        raise
    except SourceError as err:
        raise BaseModelUnavailableError(
            f"{UNAVAILABLE}: the adapter '{checkpoint.source}' goes on '{spec}', which cannot be read ({err})"
        ) from err
    if opened.layout.adapter is not None:
        raise UnsupportedAdapterError(f"The base '{spec}' of the adapter '{checkpoint.source}' is itself an adapter; "
                                      "merge it into its own base first and pass that with --base.")
    return opened


def open_store(source: str | os.PathLike[str], *, token: str | None = None) -> ByteStore:
    """The bytes of `source` (folder, `.safetensors` file or `hf://ORG/NAME[@REV]`), nothing read yet."""
    spec = os.fspath(source)
    if spec.startswith(HF_PREFIX):
        from hubguard.weights.remote import HubStore

        ref = HubRef.parse(spec)
        return HubStore(repo_id=ref.repo_id, revision=ref.revision, token=token)
    return LocalStore(spec)


def open_source(source: str | os.PathLike[str], *, allow_pickle: bool = False, token: str | None = None,
                base: "str | os.PathLike[str] | None" = None) -> Checkpoint:
    """Open `source` (folder, `.safetensors` file or `hf://ORG/NAME[@REV]`): its headers, no weights yet. Pickle
    files are only ever read from local folders; `base` is where an adapter's base is (see `Checkpoint`)."""
    spec = os.fspath(source)
    store = open_store(spec, token=token)
    return Checkpoint(store=store, allow_pickle=allow_pickle, source=spec, base=base, token=token)
