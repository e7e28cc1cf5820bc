"""Registry entries: one row per registered base model (metadata + search sketch), and table helpers."""

from __future__ import annotations

import dataclasses
import getpass
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hubguard.registry import schema

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from hubguard.lineage.fingerprints import Fingerprint


@dataclass(frozen=True)
class Entry:
    """One registered base model (every column of the entries table but the sketch)."""

    name: str
    repo_id: str | None = None
    revision: str | None = None
    family: str | None = None
    license: str | None = None
    parameters: int | None = None
    architecture: str | None = None
    model_type: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    tokenizer_sha256: str | None = None
    base_model: str | None = None
    base_model_relation: str | None = None
    method: str | None = None
    method_version: int | None = None
    token_set: str | None = None
    sketch_version: int | None = None
    fingerprint_file: str | None = None
    fingerprint_bytes: int | None = None
    storage: str | None = None
    added_by: str | None = None
    added_at: str | None = None
    notes: str | None = None
    schema_version: int | None = schema.SCHEMA_VERSION

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Entry":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def entry_row(fp: "Fingerprint", *, name: str, sketch: "np.ndarray", **meta: Any) -> dict[str, Any]:
    """The entries-table row of a fingerprint (without verification-file columns)."""
    from hubguard.lineage.sketch import SKETCH_VERSION

    m = fp.model
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "name": name,
        "repo_id": meta.get("repo_id") or (name if name.count("/") == 1 else None),
        "revision": meta.get("revision") or m.get("revision"),
        "family": meta.get("family") or m.get("family"),
        "license": meta.get("license"),
        "parameters": m.get("parameters"),
        "architecture": f"{m.get('family')}/{m.get('model_type')}",
        "model_type": m.get("model_type"),
        "num_layers": m.get("num_layers"),
        "hidden_size": m.get("hidden_size"),
        "vocab_size": m.get("vocab_size"),
        "tokenizer_sha256": m.get("tokenizer_sha256"),
        "base_model": meta.get("base_model"),
        "base_model_relation": meta.get("base_model_relation"),
        "method": fp.method,
        "method_version": fp.version,
        "token_set": fp.token_set,
        "sketch_version": SKETCH_VERSION,
        "sketch": sketch,
        "added_by": meta.get("added_by") or user(),
        "added_at": meta.get("added_at") or now(),
        "notes": meta.get("notes"),
    }


def relabel(fp: "Fingerprint", *, name: str, repo_id: str | None) -> "Fingerprint":
    """The fingerprint named as its entry (a local build path is not worth publishing)."""
    repo = repo_id or (name if name.count("/") == 1 else None)
    source = f"hf://{repo}" if repo else fp.model.get("source")
    return dataclasses.replace(fp, model={**fp.model, "name": name, "source": source})


def str_array(values: list[str]) -> "pa.Array":
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def concat(a: "pa.Table", b: "pa.Table") -> "pa.Table":
    import pyarrow as pa

    if a.num_rows == 0:
        return b
    return pa.concat_tables([a.cast(b.schema) if a.schema != b.schema else a, b]).combine_chunks()
