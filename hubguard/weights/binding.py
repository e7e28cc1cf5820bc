"""Binding a checkpoint to its architecture map — by what its config says, never by a guess.

The map is the one whose `match` names the config's `model_type` (or one of its `architectures`); a config
that names no known map is refused with `UnsupportedArchitectureError`, which lists the known families and how
to add one. `family=` (`--family`) forces a map. Only a checkpoint without any config is matched by its tensor
names, and then `BoundArchitecture.how` says which map was chosen and why. The head layout comes from the
config and is sanity-checked (positive integers, heads divisible by key/value heads, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hubguard.errors import MissingTensorError, UnsupportedArchitectureError
from hubguard.utils import get_logger
from hubguard.weights.spec import (
    QKV_LAYOUTS,
    TEMPLATE,
    ArchitectureSpec,
    Conditions,
    ConfigRule,
    QkNormSpec,
    TensorRef,
    load_specs,
)

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
    config: "dict[str, Any]" = field(default_factory=dict, compare=False, repr=False)
    values: tuple[tuple[str, Any], ...] = ()  # the map's named config values, resolved (num_experts, rotary_dim, ...)
    qkv_layout: str | None = None  # fused QKV layout, resolved from the config where the map makes it conditional

    @property
    def family(self) -> str:
        return self.spec.family

    def value(self, name: str, default: Any = None) -> Any:
        """A named config value of the map (`config` keys beyond the head layout), resolved for this checkpoint."""
        got = dict(self.values).get(name)
        return default if got is None else got

    def holds(self, conditions: Conditions) -> bool:
        """True when every (config key, value) pair holds in this checkpoint's config."""
        return all(config_get(self.config, k) == v for k, v in conditions)

    @property
    def qk_norm(self) -> QkNormSpec | None:
        """The query/key norm spec, when the map has one and the config switches it on."""
        qk = self.spec.attention.qk_norm
        return qk if qk is not None and self.holds(qk.when) else None

    @property
    def rotary_dim(self) -> int:
        """Dimensions per head that carry rotary position (0 without rotary; partial rotary: a prefix)."""
        if self.spec.attention.rotary is None:
            return 0
        dim = self.value("rotary_dim")
        if dim is None:
            fraction = self.value("rotary_fraction", 1.0)
            dim = int(self.value("rotary_head_dim", self.head_dim) * float(fraction))
        return int(dim)

    @property
    def num_experts(self) -> int:
        return int(self.value("num_experts", 0) or 0) if self.spec.moe is not None else 0

    def is_moe_layer(self, layer: int) -> bool:
        """Whether `layer` has a mixture-of-experts FFN, by the map's rule over the config (never by probing)."""
        moe = self.spec.moe
        if moe is None or self.num_experts <= 0:
            return False
        rule = moe.layers
        if rule.rule == "all":
            return True
        if rule.rule == "from":
            return layer >= int(config_get(self.config, rule.key) or 0)
        if rule.rule == "list":
            return layer in (config_get(self.config, rule.key) or [])
        step = int(config_get(self.config, rule.key) or 1)
        skipped = config_get(self.config, rule.except_key) if rule.except_key else None
        return (layer + 1) % max(step, 1) == 0 and layer not in (skipped or [])

    @property
    def kv_group(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def name(self, template: str, layer: int | None = None, *, expert: int | None = None, head: int | None = None) -> str:
        indices = {"layer_index": layer, "prev_layer_index": None if layer is None else layer - 1,
                   "expert_index": expert, "head_index": head}

        def sub(m: re.Match[str]) -> str:
            value = indices[m.group(1)]
            if value is None:
                raise MissingTensorError(f"The '{self.family}' map's template '{template}' needs a {m.group(1)}.")
            return str(value)

        return self.prefix + TEMPLATE.sub(sub, template)

    def lookup(self, ref: TensorRef, *, layer: int | None, names: "set[str] | frozenset[str]", expert: int | None = None,
               head: int | None = None) -> str | None:
        """The tensor name a map entry means for `layer` (the first alternative present in `names` whose config
        conditions hold), or None when the entry says there is none for this layer (`"first_layer": false`)."""
        if layer == 0 and ref.first_layer is not None:
            return self.lookup(ref.first_layer, layer=None, names=names)
        if ref.empty:
            return None
        resolved = [self.name(t, layer, expert=expert, head=head) for t, when in ref.options() if self.holds(when)]
        for r in resolved:
            if r in names:
                return r
        where = f"layer {layer}" + (f", expert {expert}" if expert is not None else "") + (f", head {head}" if head is not None else "")
        raise MissingTensorError(
            f"None of the tensors {resolved} is in the checkpoint, but the '{self.family}' architecture map needs one "
            f"for {where}. The checkpoint is incomplete or is not a '{self.family}' model ({self.how})."
        )

    def resolve(self, ref: TensorRef, *, layer: int | None, names: "set[str] | frozenset[str]", expert: int | None = None,
                head: int | None = None) -> str:
        """Like `lookup`, for entries that always name a tensor."""
        found = self.lookup(ref, layer=layer, names=names, expert=expert, head=head)
        if found is None:
            raise MissingTensorError(f"The '{self.family}' map names no tensor for this entry at layer {layer}.")
        return found

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


def config_get(config: dict[str, Any], key: str | None) -> Any:
    """`config[key]`, where a dotted key reads nested objects (`rope_parameters.partial_rotary_factor`)."""
    if key is None:
        return None
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _config_value(config: dict[str, Any], rules: tuple[ConfigRule, ...]) -> Any:
    for rule in rules:
        if all(config_get(config, k) == v for k, v in rule.when):
            if rule.key is None:
                return rule.value
            if config_get(config, rule.key) is not None:
                return config_get(config, rule.key)
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
    for req in spec.requires:
        if all(config_get(config, k) == v for k, v in req.when):
            raise UnsupportedArchitectureError(f"'{source}' is a '{spec.family}' model that hubguard's map cannot read: "
                                               f"{req.message}")
    values = _named_values(spec, config, source=source)
    layout = _config_value(config, spec.attention.qkv_layout) if spec.attention.qkv is not None else None
    if spec.attention.qkv is not None and layout not in QKV_LAYOUTS:
        raise UnsupportedArchitectureError(f"'{source}': the '{spec.family}' map gives no fused-QKV layout for this "
                                           f"config (got {layout!r}). Fix config.json.")
    return BoundArchitecture(spec=spec, prefix=prefix, hidden_size=hidden, num_layers=n_layers, num_heads=heads,
                             num_kv_heads=kv, head_dim=head_dim, how=how, config=dict(config), values=values,
                             qkv_layout=layout)


INT_VALUES = ("num_experts", "expert_groups", "rotary_dim", "rotary_head_dim", "qk_nope_head_dim", "qk_rope_head_dim",
              "v_head_dim", "kv_lora_rank", "q_lora_rank", "embedding_size")


def _named_values(spec: ArchitectureSpec, config: dict[str, Any], *, source: str) -> tuple[tuple[str, Any], ...]:
    """The map's named config values; the integer ones are checked like the head layout (null stays null)."""
    out = []
    for name, rules in spec.config.values:
        value = _config_value(config, rules)
        if value is not None and name in INT_VALUES:
            value = _positive_int(value, what=name, source=source, keys=rules)
        elif name == "rotary_fraction" and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
            raise UnsupportedArchitectureError(f"'{source}': config.json gives a rotary fraction of {value!r}; it "
                                               "must be a number in (0, 1]. Fix config.json.")
        out.append((name, value))
    return tuple(out)
