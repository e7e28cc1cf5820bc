"""Binding a checkpoint to its architecture map — by what its config says, never by a guess.

The map is the one whose `match` names the config's `model_type` (or one of its `architectures`); a config
that names no known map is refused with `UnsupportedArchitectureError`, which lists the known families and how
to add one. `family=` (`--family`) forces a map. Only a checkpoint without any config is matched by its tensor
names, and then `BoundArchitecture.how` says which map was chosen and why. The head layout comes from the
config and is sanity-checked (positive integers, heads divisible by key/value heads, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hubguard.errors import MissingTensorError, UnsupportedArchitectureError
from hubguard.utils import get_logger
from hubguard.weights.spec import TEMPLATE, ArchitectureSpec, ConfigRule, TensorRef, load_specs

logger = get_logger(__name__)

MAX_DIMENSION = 1 << 20  # no real model has a hidden size, head count or layer count above this
ADD_A_MAP = (
    "To add a family, write a JSON map like hubguard/weights/architectures/llama.json (embedding, per-layer q/k/v/o "
    "or fused qkv, FFN and norm tensors with ${layer_index} templates, the config keys of the head layout) into a "
    "folder named by HUBGUARD_ARCHITECTURES; or pass --family NAME (family=NAME) to read it with a known map."
)


@dataclass(frozen=True)
class BoundArchitecture:
    """An architecture map bound to one checkpoint: prefix chosen, head layout resolved from its config."""

    spec: ArchitectureSpec
    prefix: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    how: str  # why this map: "config model_type 'llama'", "forced with family='gemma'", "probed: ..."

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def kv_group(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def name(self, template: str, layer: int | None = None) -> str:
        def sub(m: re.Match[str]) -> str:
            if layer is None:
                raise MissingTensorError(f"The '{self.family}' map's template '{template}' needs a layer index.")
            return str(layer if m.group(1) == "layer_index" else layer - 1)

        return self.prefix + TEMPLATE.sub(sub, template)

    def resolve(self, ref: TensorRef, *, layer: int | None, names: "set[str] | frozenset[str]") -> str:
        """The tensor name a map entry means for `layer` (the first alternative present in `names`)."""
        if layer == 0 and ref.first_layer is not None:
            return self.resolve(ref.first_layer, layer=None, names=names)
        resolved = [self.name(t, layer) for t in ref.templates]
        for r in resolved:
            if r in names:
                return r
        raise MissingTensorError(
            f"None of the tensors {resolved} is in the checkpoint, but the '{self.family}' architecture map needs one "
            f"for layer {layer}. The checkpoint is incomplete or is not a '{self.family}' model ({self.how})."
        )

    @property
    def embedding_name(self) -> str:
        return self.name(self.spec.embedding)


def _count_layers(spec: ArchitectureSpec, prefix: str, names: "set[str]") -> int:
    pattern = re.escape(prefix + spec.layer_prefix).replace(re.escape("${layer_index}"), r"(\d+)")
    found = {int(m.group(1)) for n in names if (m := re.match(pattern, n))}
    return (max(found) + 1) if found else 0


def _prefix(spec: ArchitectureSpec, names: "set[str]") -> str | None:
    for prefix in spec.prefixes:
        if prefix + spec.embedding in names and _count_layers(spec, prefix, names) > 0:
            return prefix
    return None


def _known() -> str:
    return ", ".join(sorted(s.family for s in load_specs()))


def choose_spec(*, config: dict[str, Any], names: "set[str]", source: str, family: str | None) -> tuple[ArchitectureSpec, str]:
    """(the map, why it was chosen) — see the module docstring."""
    specs = load_specs()
    model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)] if isinstance(config.get("architectures"), list) else []
    if family is not None:
        chosen = [s for s in specs if s.family == family]
        if not chosen:
            raise UnsupportedArchitectureError(f"--family {family!r} is not a known architecture map. Known families: "
                                               f"{_known()}. {ADD_A_MAP}")
        return chosen[0], f"forced with family={family!r}"
    if model_type is not None or archs:
        by_type = [s for s in specs if model_type is not None and model_type in s.model_types]
        by_arch = [s for s in specs if set(archs) & set(s.architectures)]
        if by_type or by_arch:
            spec = (by_type or by_arch)[0]
            why = f"config model_type {model_type!r}" if by_type else f"config architectures {archs}"
            return spec, why
        raise UnsupportedArchitectureError(
            f"'{source}' is a model_type={model_type!r} (architectures={archs}) checkpoint, and no architecture map "
            f"names it, so hubguard cannot canonicalise its weights correctly and will not guess. Known families: "
            f"{_known()}. {ADD_A_MAP}"
        )
    fitting = [s for s in specs if _prefix(s, names) is not None]
    if not fitting:
        raise UnsupportedArchitectureError(
            f"'{source}' has no config.json (or one without model_type/architectures), and its tensors (e.g. "
            f"{sorted(names)[:4]}) fit no architecture map. Put the model's config.json next to the weights. "
            f"Known families: {_known()}. {ADD_A_MAP}"
        )
    also = [s.family for s in fitting[1:]]
    why = (f"probed: no model_type in config.json; the tensor names fit the '{fitting[0].family}' map"
           + (f" (they also fit {also}; pass --family to choose)" if also else ""))
    logger.warning("%s: %s", source, why)
    return fitting[0], why


def _config_value(config: dict[str, Any], rules: tuple[ConfigRule, ...]) -> Any:
    for rule in rules:
        if all(config.get(k) == v for k, v in rule.when):
            if rule.key is None:
                return rule.value
            if config.get(rule.key) is not None:
                return config[rule.key]
    return None


def _positive_int(value: Any, *, what: str, source: str, keys: tuple[ConfigRule, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DIMENSION:
        tried = [r.key or r.value for r in keys]
        raise UnsupportedArchitectureError(
            f"'{source}': config.json gives {what} = {value!r} (keys tried: {tried}); it must be a positive integer "
            f"up to {MAX_DIMENSION}. Fix config.json (it must be the model's own)."
        )
    return value


def bind_architecture(
    *, config: dict[str, Any], tensor_names: list[str], source: str = "checkpoint", family: str | None = None
) -> BoundArchitecture:
    """Choose the architecture map for a checkpoint (see the module docstring) and resolve its head layout."""
    names = set(tensor_names)
    spec, how = choose_spec(config=config, names=names, source=source, family=family)
    prefix = _prefix(spec, names)
    if prefix is None:
        raise MissingTensorError(
            f"'{source}' is bound to the '{spec.family}' map ({how}) but its tensors do not fit it: no "
            f"'{spec.embedding}' with '{spec.layer_prefix}' layers under the prefixes {list(spec.prefixes)} (e.g. "
            f"tensors {sorted(names)[:4]}). The checkpoint is incomplete, or its config.json belongs to another model."
        )
    cfg = spec.config
    hidden = _positive_int(_config_value(config, cfg.hidden_size), what="the hidden size", source=source, keys=cfg.hidden_size)
    heads = _positive_int(_config_value(config, cfg.num_heads), what="the number of attention heads", source=source,
                          keys=cfg.num_heads)
    kv_raw = _config_value(config, cfg.num_kv_heads)
    kv = heads if kv_raw is None else _positive_int(kv_raw, what="the number of key/value heads", source=source,
                                                       keys=cfg.num_kv_heads)
    hd_raw = _config_value(config, cfg.head_dim)
    if hd_raw is None and hidden % heads:
        raise UnsupportedArchitectureError(f"'{source}': {heads} attention heads do not divide the hidden size {hidden} "
                                           "and config.json gives no head_dim. Fix config.json.")
    head_dim = hidden // heads if hd_raw is None else _positive_int(hd_raw, what="head_dim", source=source, keys=cfg.head_dim)
    if heads % kv:
        raise UnsupportedArchitectureError(f"'{source}': {heads} attention heads are not a multiple of {kv} key/value "
                                           "heads. Fix config.json.")
    n_layers = _count_layers(spec, prefix, names)
    n_layers_cfg = _config_value(config, cfg.num_layers)
    if n_layers_cfg is not None and n_layers_cfg != n_layers:
        # Pruned or up-scaled checkpoints sometimes keep a stale config; trust the tensors, but say so.
        logger.warning("%s: config says %s layers, tensors hold %s; using the tensors.", source, n_layers_cfg, n_layers)
    return BoundArchitecture(spec=spec, prefix=prefix, hidden_size=hidden, num_layers=n_layers, num_heads=heads,
                             num_kv_heads=kv, head_dim=head_dim, how=how)
