"""Architecture maps as data: one JSON file per family under `architectures/`.

A map names the tensors hubguard reads, as templates with `${layer_index}` (and `${prev_layer_index}` for
post-LayerNorm encoders, whose attention reads the previous layer's output norm), the config keys holding the
head layout, how fused QKV is laid out, and which norm feeds which linear map. Adding a family is adding a
JSON file (to this folder, or to a folder named by `HUBGUARD_ARCHITECTURES`); no code changes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from hubguard.errors import ArchitectureMapError, MissingTensorError, UnsupportedArchitectureError

ARCH_SCHEMA_VERSION = 1
_TEMPLATE = re.compile(r"\$\{(layer_index|prev_layer_index)\}")


@dataclass(frozen=True)
class ArchitectureMap:
    """One family's tensor-name templates and head-layout rules, as read from its JSON file."""

    family: str
    spec: dict[str, Any]
    path: str

    @property
    def model_types(self) -> list[str]:
        return list(self.spec.get("match", {}).get("model_type", []))

    @property
    def architectures(self) -> list[str]:
        return list(self.spec.get("match", {}).get("architectures", []))


def _validate(spec: dict[str, Any], path: str) -> None:
    missing = [k for k in ("family", "prefixes", "config", "norm", "embedding", "layer_prefix", "attention", "ffn") if k not in spec]
    if missing:
        raise ArchitectureMapError(f"Architecture map '{path}' lacks the keys {missing}. See an existing file, e.g. llama.json.")
    attn = spec["attention"]
    if not ({"q", "k", "v"} <= attn.keys() or "qkv" in attn) or "o" not in attn or "norm" not in attn:
        raise ArchitectureMapError(f"'{path}': attention needs 'norm', 'o' and either 'q','k','v' or a fused 'qkv'.")
    if "qkv" in attn and attn.get("qkv_layout") not in {"concat", "grouped"}:
        raise ArchitectureMapError(f"'{path}': a fused 'qkv' needs qkv_layout 'concat' or 'grouped'.")
    ffn = spec["ffn"]
    if ffn.get("type") not in {"gated", "plain"}:
        raise ArchitectureMapError(f"'{path}': ffn.type must be 'gated' or 'plain'.")
    if spec["norm"].get("type") not in {"rms", "layer"}:
        raise ArchitectureMapError(f"'{path}': norm.type must be 'rms' or 'layer'.")


def _map_dirs() -> list[Path]:
    dirs = []
    extra = os.environ.get("HUBGUARD_ARCHITECTURES")
    if extra:
        dirs.extend(Path(p) for p in extra.split(os.pathsep) if p)
    dirs.append(Path(str(resources.files("hubguard.weights") / "architectures")))
    return dirs


@lru_cache(maxsize=1)
def load_architecture_maps() -> tuple[ArchitectureMap, ...]:
    """All architecture maps (user folders first, so they can override a shipped family)."""
    maps: dict[str, ArchitectureMap] = {}
    for d in _map_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            try:
                spec = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ArchitectureMapError(f"Architecture map '{f}' is not valid JSON: {err}.") from err
            if int(spec.get("schema_version", 1)) > ARCH_SCHEMA_VERSION:
                raise ArchitectureMapError(f"'{f}' has schema_version {spec['schema_version']}; upgrade hubguard to read it.")
            _validate(spec, str(f))
            maps.setdefault(spec["family"], ArchitectureMap(family=spec["family"], spec=spec, path=str(f)))
    return tuple(maps.values())


def _config_value(config: dict[str, Any], rules: list[Any]) -> Any:
    for rule in rules:
        if isinstance(rule, str):
            if config.get(rule) is not None:
                return config[rule]
        elif isinstance(rule, dict):
            when = rule.get("when", {})
            if all(config.get(k) == v for k, v in when.items()):
                if "value" in rule:
                    return rule["value"]
                if config.get(rule.get("key", "")) is not None:
                    return config[rule["key"]]
    return None


@dataclass(frozen=True)
class BoundArchitecture:
    """An architecture map bound to one checkpoint: prefix chosen, head layout resolved from its config."""

    map: ArchitectureMap
    prefix: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def family(self) -> str:
        return self.map.family

    @property
    def spec(self) -> dict[str, Any]:
        return self.map.spec

    def name(self, template: str, layer: int | None = None) -> str:
        def sub(m: re.Match[str]) -> str:
            if layer is None:
                raise ArchitectureMapError(f"Template '{template}' needs a layer index.")
            return str(layer if m.group(1) == "layer_index" else layer - 1)

        return self.prefix + _TEMPLATE.sub(sub, template)

    def resolve(self, entry: Any, *, layer: int | None, names: set[str]) -> str:
        """Resolve a map entry (a template, a list of alternatives, or {"name", "first_layer"}) to a tensor name."""
        if isinstance(entry, dict):
            if layer == 0 and "first_layer" in entry:
                return self.resolve(entry["first_layer"], layer=None, names=names)
            return self.resolve(entry["name"], layer=layer, names=names)
        candidates = entry if isinstance(entry, list) else [entry]
        resolved = [self.name(c, layer) for c in candidates]
        for r in resolved:
            if r in names:
                return r
        raise MissingTensorError(
            f"None of the tensors {resolved} is in the checkpoint, but the '{self.family}' architecture map needs one "
            f"for layer {layer}. The checkpoint is incomplete or is not a '{self.family}' model."
        )

    @property
    def embedding_name(self) -> str:
        return self.name(self.spec["embedding"])


def _count_layers(amap: ArchitectureMap, prefix: str, names: set[str]) -> int:
    pat = re.compile(re.escape(prefix + amap.spec["layer_prefix"]).replace(re.escape("${layer_index}"), r"(\d+)"))
    found = {int(m.group(1)) for n in names if (m := pat.match(n))}
    return (max(found) + 1) if found else 0


def bind_architecture(*, config: dict[str, Any], tensor_names: list[str], source: str = "checkpoint") -> BoundArchitecture:
    """Choose the architecture map for a checkpoint and resolve its head layout.

    The map is chosen by `config.json` (`model_type`, then `architectures`), then by probing tensor names.
    """
    names = set(tensor_names)
    maps = load_architecture_maps()
    model_type = config.get("model_type")
    archs = set(config.get("architectures") or [])
    ordered = [m for m in maps if model_type in m.model_types]
    ordered += [m for m in maps if archs & set(m.architectures) and m not in ordered]
    ordered += [m for m in maps if m not in ordered]
    for amap in ordered:
        for prefix in amap.spec["prefixes"]:
            if prefix + amap.spec["embedding"] in names and _count_layers(amap, prefix, names) > 0:
                return _bind(amap, prefix, config, names, source)
        if amap in ordered[:1] and (model_type in amap.model_types):
            break  # the config names this family, but its tensors are not there: do not guess another
    known = ", ".join(sorted(m.family for m in maps))
    raise UnsupportedArchitectureError(
        f"No architecture map fits '{source}' (model_type={model_type!r}, architectures={sorted(archs)}, e.g. tensors "
        f"{sorted(names)[:4]}). Known families: {known}. To add one, write a JSON file like "
        "hubguard/checkpoint/architectures/llama.json naming the embedding, per-layer q/k/v/o (or fused qkv), FFN and "
        "norm tensors with ${layer_index} templates, and point HUBGUARD_ARCHITECTURES at its folder."
    )


def _bind(amap: ArchitectureMap, prefix: str, config: dict[str, Any], names: set[str], source: str) -> BoundArchitecture:
    cfg = amap.spec["config"]
    hidden = _config_value(config, cfg.get("hidden_size", []))
    n_layers_cfg = _config_value(config, cfg.get("num_layers", []))
    n_layers = _count_layers(amap, prefix, names)
    heads = _config_value(config, cfg.get("num_heads", []))
    if heads is None:
        raise UnsupportedArchitectureError(
            f"'{source}' looks like a '{amap.family}' model but its config.json does not give the number of attention "
            f"heads (keys tried: {cfg.get('num_heads')}). Put the model's config.json next to the weights."
        )
    kv = _config_value(config, cfg.get("num_kv_heads", [])) or heads
    if hidden is None:
        raise UnsupportedArchitectureError(f"'{source}': config.json lacks the hidden size (keys tried: {cfg.get('hidden_size')}).")
    head_dim = _config_value(config, cfg.get("head_dim", [])) or int(hidden) // int(heads)
    if n_layers_cfg is not None and int(n_layers_cfg) != n_layers:
        # Pruned or up-scaled checkpoints sometimes keep a stale config; trust the tensors, but say so.
        from hubguard.utils import get_logger

        get_logger(__name__).warning(
            "%s: config says %s layers, tensors hold %s; using the tensors.", source, n_layers_cfg, n_layers
        )
    if int(heads) % int(kv):
        raise UnsupportedArchitectureError(f"'{source}': {heads} attention heads are not a multiple of {kv} key/value heads.")
    return BoundArchitecture(
        map=amap,
        prefix=prefix,
        hidden_size=int(hidden),
        num_layers=n_layers,
        num_heads=int(heads),
        num_kv_heads=int(kv),
        head_dim=int(head_dim),
    )
