"""Reading the zoo manifest (`zoo.json`, schema_version 1) and turning it into labelled (base, candidate) pairs.

The reader tolerates unknown fields (newer writers may add some) and refuses other schema versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_SCHEMA = 1


@dataclass(frozen=True)
class ZooModel:
    name: str
    path: Path
    family: str
    kind: str
    bases: tuple[str, ...]
    parents: tuple[str, ...]
    layer_sources: tuple[dict[str, Any], ...] | None
    seed: int
    train_tokens: int
    notes: dict[str, Any]

    @property
    def is_base(self) -> bool:
        return self.kind == "base"


@dataclass(frozen=True)
class Zoo:
    root: Path
    quick: bool
    models: tuple[ZooModel, ...]
    raw: dict[str, Any]

    def get(self, name: str) -> ZooModel:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"no model {name!r} in the zoo at {self.root}")

    @property
    def bases(self) -> tuple[ZooModel, ...]:
        return tuple(m for m in self.models if m.is_base)


@dataclass(frozen=True)
class Pair:
    """One comparison of a registered base with a candidate. ``kind`` is the candidate's derivative kind for
    positives, ``independent_seed`` for another base of the same family, ``unrelated_derivative`` for a
    derivative of another base of the family, ``other_family`` across families."""

    base: str
    candidate: str
    positive: bool
    kind: str
    same_family: bool


def read_manifest(path: str | Path) -> Zoo:
    """Read ``zoo.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "zoo.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: build the zoo first with `python benchmarks/zoo.py`")
    raw = json.loads(path.read_text())
    if raw.get("schema_version") != SUPPORTED_SCHEMA:
        raise ValueError(f"{path} has schema_version {raw.get('schema_version')!r}; this reader knows "
                         f"{SUPPORTED_SCHEMA}. Rebuild the zoo with this checkout's benchmarks/zoo.py")
    root = Path(raw.get("root") or path.parent)
    models = []
    for entry in raw["models"]:
        base = entry["base"]
        model_path = Path(entry["path"])
        if not model_path.is_absolute():
            model_path = root / model_path
        sources = entry.get("layer_sources")
        models.append(ZooModel(
            name=entry["name"], path=model_path, family=entry["family"], kind=entry["kind"],
            bases=tuple(base) if isinstance(base, list) else (base,), parents=tuple(entry.get("parents") or ()),
            layer_sources=tuple(sources) if sources is not None else None, seed=int(entry["seed"]),
            train_tokens=int(entry.get("train_tokens", 0)), notes=dict(entry.get("notes") or {}),
        ))
    return Zoo(root=root, quick=bool(raw.get("quick")), models=tuple(models), raw=raw)


def labelled_pairs(zoo: Zoo, *, cross_family: bool = False) -> list[Pair]:
    """Every (base, candidate) pair: positive when the candidate derives from the base (any of its bases, for
    merges and frankenmerges). Cross-family pairs are included only when ``cross_family`` is set."""
    pairs = []
    for base in zoo.bases:
        for cand in zoo.models:
            if cand.name == base.name:
                continue
            same = cand.family == base.family
            if not same and not cross_family:
                continue
            if base.name in cand.bases:
                kind, positive = cand.kind, True
            elif not same:
                kind, positive = "other_family", False
            else:
                kind, positive = ("independent_seed" if cand.is_base else "unrelated_derivative"), False
            pairs.append(Pair(base=base.name, candidate=cand.name, positive=positive, kind=kind, same_family=same))
    return pairs
