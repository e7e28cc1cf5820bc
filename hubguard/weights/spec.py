"""Architecture maps as data: one JSON file per family under `architectures/`, parsed into frozen typed specs.

A map names the tensors hubguard reads, as templates with `${layer_index}` (and `${prev_layer_index}` for
post-LayerNorm encoders, whose attention reads the previous layer's output norm), the config keys holding the
head layout, how fused QKV is laid out, and which norm feeds which linear map. Adding a family is adding a
JSON file (to this folder, or to a folder named by `HUBGUARD_ARCHITECTURES`); no code changes. Unknown keys
are ignored (a newer map still loads); a malformed map is an `ArchitectureMapError` naming the file and key.

A tensor entry is a template, a list of alternative templates (the first present wins), or
`{"name": ..., "first_layer": ...}` (layer 0 reads another tensor, e.g. BERT's embedding LayerNorm).
A config rule is a key name, or `{"when": {key: value}, "key": name}` / `{"when": {...}, "value": v}`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from hubguard import constants
from hubguard.errors import ArchitectureMapError

ARCH_SCHEMA_VERSION = 1
TEMPLATE = re.compile(r"\$\{(layer_index|prev_layer_index)\}")
NORM_TYPES = ("rms", "layer")
FFN_TYPES = ("gated", "plain")
QKV_LAYOUTS = ("concat", "grouped")


@dataclass(frozen=True)
class TensorRef:
    """One map entry: alternative name templates (first present wins), and what layer 0 reads instead."""

    templates: tuple[str, ...]
    first_layer: "TensorRef | None" = None


@dataclass(frozen=True)
class ConfigRule:
    """Where a config value comes from: `key`, or a fixed `value`, when every `when` item matches."""

    key: str | None = None
    value: Any = None
    when: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class ConfigSpec:
    hidden_size: tuple[ConfigRule, ...]
    num_layers: tuple[ConfigRule, ...]
    num_heads: tuple[ConfigRule, ...]
    num_kv_heads: tuple[ConfigRule, ...] = ()
    head_dim: tuple[ConfigRule, ...] = ()


@dataclass(frozen=True)
class NormSpec:
    type: str  # "rms" | "layer"
    offset: float = 0.0  # gain = weight + offset (Gemma stores 1 + w as w)


@dataclass(frozen=True)
class AttentionSpec:
    norm: TensorRef
    o: TensorRef
    q: TensorRef | None = None
    k: TensorRef | None = None
    v: TensorRef | None = None
    qkv: TensorRef | None = None  # fused
    qkv_layout: str | None = None  # "concat" [q; k; v] | "grouped" [kv, heads/kv + 2, hd]
    rotary: str | None = None  # "half": rotary planes pair dimension i with i + hd/2

    @property
    def fused(self) -> bool:
        return self.qkv is not None


@dataclass(frozen=True)
class FfnSpec:
    type: str  # "gated" | "plain"
    norm: TensorRef
    down: TensorRef
    up: TensorRef | None = None
    gate: TensorRef | None = None
    gate_up: TensorRef | None = None  # fused [gate; up]


@dataclass(frozen=True)
class ArchitectureSpec:
    """One family's tensor-name templates and head-layout rules, as read from its JSON file."""

    family: str
    path: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    prefixes: tuple[str, ...]
    config: ConfigSpec
    norm: NormSpec
    embedding: str
    layer_prefix: str
    attention: AttentionSpec
    ffn: FfnSpec
    conv1d: bool = False  # weights stored [in, out] (GPT-2's Conv1D)
    notes: str = ""

    def names(self, *, model_type: str | None, architectures: list[str]) -> bool:
        """True when a config's `model_type` or one of its `architectures` is named by this map."""
        return (model_type is not None and model_type in self.model_types) or bool(set(architectures) & set(self.architectures))


# --- parsing ------------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to one JSON object of a map file; every defect names the file and the key."""

    def __init__(self, data: Any, *, path: str, where: str) -> None:
        if not isinstance(data, dict):
            raise ArchitectureMapError(f"'{path}': {where or 'the map'} must be a JSON object.")
        self.data, self.path, self.where = data, path, where

    def _fail(self, key: str, want: str) -> ArchitectureMapError:
        return ArchitectureMapError(f"'{self.path}': '{self.where + '.' if self.where else ''}{key}' must be {want}. "
                                    "See an existing map, e.g. hubguard/weights/architectures/llama.json.")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def str(self, key: str, *, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value and default is None:
            raise self._fail(key, "a non-empty string")
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.data.get(key)
        if value not in options:
            raise self._fail(key, " or ".join(repr(o) for o in options))
        return str(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "a list of strings")
        return tuple(value)

    def child(self, key: str) -> "_Reader":
        return _Reader(self.data.get(key), path=self.path, where=f"{self.where}.{key}" if self.where else key)

    def tensor(self, key: str, *, optional: bool = False) -> TensorRef | None:
        if self.data.get(key) is None:
            if optional:
                return None
            raise self._fail(key, "a tensor name template")
        return _tensor_ref(self.data[key], fail=lambda: self._fail(key, "a template, a list of templates, or "
                                                                        '{"name", "first_layer"}'))

    def rules(self, key: str) -> tuple[ConfigRule, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self._fail(key, "a list of config keys or rules")
        out = []
        for rule in value:
            if isinstance(rule, str):
                out.append(ConfigRule(key=rule))
            elif isinstance(rule, dict) and isinstance(rule.get("when", {}), dict) and ("key" in rule or "value" in rule):
                out.append(ConfigRule(key=rule.get("key"), value=rule.get("value"),
                                      when=tuple(sorted(rule.get("when", {}).items()))))
            else:
                raise self._fail(key, 'a list of config keys or {"when": {...}, "key"|"value": ...} rules')
        return tuple(out)


def _tensor_ref(entry: Any, *, fail: Any) -> TensorRef:
    if isinstance(entry, str) and entry:
        return TensorRef(templates=(entry,))
    if isinstance(entry, list) and entry and all(isinstance(e, str) and e for e in entry):
        return TensorRef(templates=tuple(entry))
    if isinstance(entry, dict) and "name" in entry:
        first = _tensor_ref(entry["first_layer"], fail=fail) if entry.get("first_layer") is not None else None
        return TensorRef(templates=_tensor_ref(entry["name"], fail=fail).templates, first_layer=first)
    raise fail()


def parse_spec(data: Any, *, path: str) -> ArchitectureSpec:
    """A typed spec from one map file's JSON."""
    top = _Reader(data, path=path, where="")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > ARCH_SCHEMA_VERSION:
        raise ArchitectureMapError(f"'{path}' has schema_version {version!r}; this hubguard reads up to "
                                   f"{ARCH_SCHEMA_VERSION}. Upgrade hubguard to read it.")
    cfg, norm, attn, ffn, match = (top.child(k) for k in ("config", "norm", "attention", "ffn", "match"))
    attention = AttentionSpec(
        norm=attn.tensor("norm"), o=attn.tensor("o"), q=attn.tensor("q", optional=True), k=attn.tensor("k", optional=True),
        v=attn.tensor("v", optional=True), qkv=attn.tensor("qkv", optional=True),
        qkv_layout=attn.choice("qkv_layout", QKV_LAYOUTS) if attn.has("qkv") else None,
        rotary=attn.str("rotary") if attn.has("rotary") else None,
    )
    if attention.qkv is None and None in (attention.q, attention.k, attention.v):
        raise ArchitectureMapError(f"'{path}': attention needs 'norm', 'o' and either 'q', 'k', 'v' or a fused 'qkv'.")
    ffn_type = ffn.choice("type", FFN_TYPES)
    feed = FfnSpec(type=ffn_type, norm=ffn.tensor("norm"), down=ffn.tensor("down"), up=ffn.tensor("up", optional=True),
                   gate=ffn.tensor("gate", optional=True), gate_up=ffn.tensor("gate_up", optional=True))
    if ffn_type == "gated" and feed.gate_up is None and None in (feed.gate, feed.up):
        raise ArchitectureMapError(f"'{path}': a gated ffn needs 'gate' and 'up', or a fused 'gate_up'.")
    if ffn_type == "plain" and feed.up is None:
        raise ArchitectureMapError(f"'{path}': a plain ffn needs 'up'.")
    return ArchitectureSpec(
        family=top.str("family"), path=path, model_types=match.strings("model_type"),
        architectures=match.strings("architectures"), prefixes=top.strings("prefixes") or ("",),
        config=ConfigSpec(hidden_size=cfg.rules("hidden_size"), num_layers=cfg.rules("num_layers"),
                          num_heads=cfg.rules("num_heads"), num_kv_heads=cfg.rules("num_kv_heads"),
                          head_dim=cfg.rules("head_dim")),
        norm=NormSpec(type=norm.choice("type", NORM_TYPES), offset=float(norm.data.get("offset", 0.0))),
        embedding=top.str("embedding"), layer_prefix=top.str("layer_prefix"), attention=attention, ffn=feed,
        conv1d=bool(data.get("conv1d", False)), notes=str(data.get("notes", "")),
    )


def _map_dirs() -> list[Path]:
    return [*constants.extra_architecture_dirs(), Path(str(resources.files("hubguard.weights") / "architectures"))]


@lru_cache(maxsize=1)
def load_specs() -> tuple[ArchitectureSpec, ...]:
    """All architecture maps (user folders first, so they can override a shipped family)."""
    specs: dict[str, ArchitectureSpec] = {}
    for d in _map_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ArchitectureMapError(f"Architecture map '{f}' is not valid JSON: {err}.") from err
            spec = parse_spec(data, path=str(f))
            specs.setdefault(spec.family, spec)
    return tuple(specs.values())
