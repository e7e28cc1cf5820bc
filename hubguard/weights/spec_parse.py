"""Parsing architecture-map JSON into the typed specs of `hubguard.weights.spec_schema`; every defect names the file and key."""

from __future__ import annotations

from typing import Any

from hubguard.errors import ArchitectureMapError
from hubguard.weights.spec_schema import (
    ARCH_SCHEMA_VERSION,
    EXPERT_LAYOUTS,
    FFN_TYPES,
    MOE_LAYER_RULES,
    NORM_TYPES,
    PLACEMENTS,
    QK_NORM_SCOPES,
    QKV_LAYOUTS,
    ROTARY_LAYOUTS,
    ArchitectureSpec,
    AttentionSpec,
    Conditions,
    ConfigRule,
    ConfigSpec,
    ExpertTensors,
    FfnSpec,
    FusedExperts,
    MoeLayers,
    MoeSpec,
    NormSpec,
    OutputSpec,
    QkNormSpec,
    Requirement,
    TensorRef,
)

CORE_CONFIG = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
EXAMPLE = "See an existing map, e.g. hubguard/weights/architectures/llama.json, and architectures/README.md."


class _Reader:
    """Typed access to one JSON object of a map file; every defect names the file and the key."""

    def __init__(self, data: Any, *, path: str, where: str) -> None:
        if not isinstance(data, dict):
            raise ArchitectureMapError(f"'{path}': {where or 'the map'} must be a JSON object. {EXAMPLE}")
        self.data, self.path, self.where = data, path, where

    def fail(self, key: str, want: str) -> ArchitectureMapError:
        return ArchitectureMapError(f"'{self.path}': '{self.where + '.' if self.where else ''}{key}' must be {want}. "
                                    f"{EXAMPLE}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def str(self, key: str, *, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value and default is None:
            raise self.fail(key, "a non-empty string")
        return value

    def choice(self, key: str, options: tuple[str, ...], *, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value not in options:
            raise self.fail(key, " or ".join(repr(o) for o in options))
        return str(value)

    def optional_choice(self, key: str, options: tuple[str, ...]) -> str | None:
        return self.choice(key, options) if self.has(key) else None

    def bool(self, key: str, *, default: bool = False) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "a list of non-empty strings")
        return tuple(value)

    def child(self, key: str) -> "_Reader":
        return _Reader(self.data.get(key), path=self.path, where=f"{self.where}.{key}" if self.where else key)

    def optional_child(self, key: str) -> "_Reader | None":
        return self.child(key) if self.has(key) else None

    def conditions(self, key: str) -> Conditions:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "an object of config key -> value")
        return tuple(sorted(value.items()))

    def tensor(self, key: str) -> TensorRef:
        if self.data.get(key) is None:
            raise self.fail(key, "a tensor name template")
        return _tensor_ref(self.data[key], fail=lambda: self.fail(
            key, 'a template, a list of templates (or {"when", "name"} alternatives), or {"name", "first_layer"}'))

    def optional_tensor(self, key: str) -> TensorRef | None:
        return self.tensor(key) if self.has(key) else None

    def norm_tensor(self, key: str) -> TensorRef | None:
        """A norm entry: must be present; null when there is no norm, false for a norm without parameters."""
        if key not in self.data:
            raise self.fail(key, "present (a norm gain template; false: a norm without parameters; null: no norm)")
        if self.data[key] is False:
            return TensorRef(templates=(), free=True)
        return self.optional_tensor(key)

    def rules(self, key: str, *, value: Any = None) -> tuple[ConfigRule, ...]:
        raw = self.data.get(key, [])
        return _rules(raw if value is None else value, fail=lambda: self.fail(
            key, 'a list of config keys or {"when": {...}, "key"|"value": ...} rules'))


def _rules(raw: Any, *, fail: Any) -> tuple[ConfigRule, ...]:
    if not isinstance(raw, list):
        raise fail()
    out = []
    for rule in raw:
        if isinstance(rule, str) and rule:
            out.append(ConfigRule(key=rule))
        elif isinstance(rule, dict) and isinstance(rule.get("when", {}), dict) and ("key" in rule or "value" in rule):
            key = rule.get("key")
            if key is not None and not (isinstance(key, str) and key):
                raise fail()
            out.append(ConfigRule(key=key, value=rule.get("value"), when=tuple(sorted(rule.get("when", {}).items()))))
        else:
            raise fail()
    return tuple(out)


def _tensor_ref(entry: Any, *, fail: Any) -> TensorRef:
    if isinstance(entry, str) and entry:
        return TensorRef(templates=(entry,))
    if isinstance(entry, list) and entry:
        templates, conditions = [], []
        for e in entry:
            if isinstance(e, str) and e:
                templates.append(e)
                conditions.append(())
            elif isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"] and isinstance(e.get("when", {}), dict):
                templates.append(e["name"])
                conditions.append(tuple(sorted(e.get("when", {}).items())))
            else:
                raise fail()
        return TensorRef(templates=tuple(templates), conditions=tuple(conditions) if any(conditions) else ())
    if isinstance(entry, dict) and "name" in entry:
        first = entry.get("first_layer")
        if first is False:
            first_ref: TensorRef | None = TensorRef(templates=())
        else:
            first_ref = _tensor_ref(first, fail=fail) if first is not None else None
        inner = _tensor_ref(entry["name"], fail=fail)
        return TensorRef(templates=inner.templates, first_layer=first_ref, conditions=inner.conditions)
    raise fail()


def _config(cfg: _Reader) -> ConfigSpec:
    extra = tuple((k, cfg.rules(k)) for k in sorted(cfg.data) if k not in CORE_CONFIG)
    return ConfigSpec(hidden_size=cfg.rules("hidden_size"), num_layers=cfg.rules("num_layers"),
                      num_heads=cfg.rules("num_heads"), num_kv_heads=cfg.rules("num_kv_heads"),
                      head_dim=cfg.rules("head_dim"), values=extra)


def _attention(attn: _Reader, *, path: str) -> AttentionSpec:
    qk = attn.optional_child("qk_norm")
    layout = attn.data.get("qkv_layout")
    if isinstance(layout, str):
        if layout not in QKV_LAYOUTS:
            raise attn.fail("qkv_layout", " or ".join(repr(o) for o in QKV_LAYOUTS) + " (or config rules giving one)")
        layout_rules: tuple[ConfigRule, ...] = (ConfigRule(value=layout),)
    else:
        layout_rules = attn.rules("qkv_layout") if layout is not None else ()
    spec = AttentionSpec(
        norm=attn.norm_tensor("norm"), o=attn.tensor("o"), q=attn.optional_tensor("q"),
        k=attn.optional_tensor("k"), v=attn.optional_tensor("v"), qkv=attn.optional_tensor("qkv"),
        qkv_layout=layout_rules, rotary=attn.optional_choice("rotary", ROTARY_LAYOUTS),
        qk_norm=None if qk is None else QkNormSpec(
            q=qk.tensor("q"), k=qk.tensor("k"), scope=qk.choice("scope", QK_NORM_SCOPES, default="head"),
            when=qk.conditions("when"), type=qk.optional_choice("type", NORM_TYPES)),
        post_norm=attn.optional_tensor("post_norm"),
        q_a=attn.optional_tensor("q_a"), q_a_norm=attn.optional_tensor("q_a_norm"), q_b=attn.optional_tensor("q_b"),
        kv_a=attn.optional_tensor("kv_a"), kv_a_norm=attn.optional_tensor("kv_a_norm"), kv_b=attn.optional_tensor("kv_b"),
    )
    if spec.kind == "mla":
        if None in (spec.kv_a, spec.kv_a_norm) or (spec.q is None and None in (spec.q_a, spec.q_a_norm, spec.q_b)):
            raise ArchitectureMapError(f"'{path}': latent attention needs 'kv_a', 'kv_a_norm', 'kv_b' and 'q' or "
                                       f"'q_a', 'q_a_norm', 'q_b'. {EXAMPLE}")
    elif spec.qkv is None and None in (spec.q, spec.k, spec.v):
        raise ArchitectureMapError(f"'{path}': attention needs 'norm', 'o' and either 'q', 'k', 'v' or a fused 'qkv'. "
                                   f"{EXAMPLE}")
    if spec.qkv is not None and not layout_rules:
        raise attn.fail("qkv_layout", "given for a fused 'qkv'")
    return spec


def _ffn(ffn: _Reader, *, path: str) -> FfnSpec:
    ffn_type = ffn.choice("type", FFN_TYPES)
    feed = FfnSpec(type=ffn_type, norm=ffn.norm_tensor("norm"), down=ffn.tensor("down"), up=ffn.optional_tensor("up"),
                   gate=ffn.optional_tensor("gate"), gate_up=ffn.optional_tensor("gate_up"),
                   post_norm=ffn.optional_tensor("post_norm"))
    if ffn_type == "gated" and feed.gate_up is None and None in (feed.gate, feed.up):
        raise ArchitectureMapError(f"'{path}': a gated ffn needs 'gate' and 'up', or a fused 'gate_up'. {EXAMPLE}")
    if ffn_type == "plain" and feed.up is None:
        raise ArchitectureMapError(f"'{path}': a plain ffn needs 'up'. {EXAMPLE}")
    return feed


def _experts(r: _Reader) -> ExpertTensors:
    spec = ExpertTensors(down=r.tensor("down"), gate=r.optional_tensor("gate"), up=r.optional_tensor("up"),
                         gate_up=r.optional_tensor("gate_up"))
    if spec.gate_up is None and None in (spec.gate, spec.up):
        raise r.fail("gate", "given with 'up' (or a fused 'gate_up')")
    return spec


def _moe(moe: _Reader, *, path: str, config: ConfigSpec) -> MoeSpec:
    layers = moe.child("layers")
    rule = next((k for k in MOE_LAYER_RULES if k in layers.data), None)
    if rule is None:
        raise moe.fail("layers", "one of " + ", ".join(f'{{"{k}": ...}}' for k in MOE_LAYER_RULES))
    if rule == "all":
        which = MoeLayers()
    else:
        which = MoeLayers(rule=rule, key=layers.str(rule),
                          except_key=layers.str("except") if layers.has("except") else None)
    fused = moe.optional_child("fused_experts")
    shared = moe.optional_child("shared")
    spec = MoeSpec(
        router=moe.tensor("router"), layers=which,
        experts=_experts(moe.child("experts")) if moe.has("experts") else None,
        fused=None if fused is None else FusedExperts(gate_up=fused.tensor("gate_up"), down=fused.tensor("down"),
                                                      layout=fused.choice("layout", EXPERT_LAYOUTS, default="out_in")),
        shared=_experts(shared) if shared is not None else None, shared_gate=moe.optional_tensor("shared_gate"),
        router_bias=moe.optional_tensor("router_bias"),
    )
    if spec.experts is None and spec.fused is None:
        raise ArchitectureMapError(f"'{path}': 'moe' needs 'experts' (per-expert templates) or 'fused_experts'. {EXAMPLE}")
    if not config.rules("num_experts"):
        raise ArchitectureMapError(f"'{path}': a map with 'moe' needs config 'num_experts' rules. {EXAMPLE}")
    return spec


def _output(out: _Reader | None) -> OutputSpec:
    if out is None:
        return OutputSpec()
    return OutputSpec(norm=out.optional_tensor("norm"), head=out.strings("head"), head_writers=out.strings("head_writers"),
                      head_vectors=out.strings("head_vectors"))


def _requirements(top: _Reader) -> tuple[Requirement, ...]:
    raw = top.data.get("requires", [])
    if not isinstance(raw, list):
        raise top.fail("requires", 'a list of {"when": {...}, "refuse": message}')
    out = []
    for i, item in enumerate(raw):
        r = _Reader(item, path=top.path, where=f"requires[{i}]")
        out.append(Requirement(when=r.conditions("when"), message=r.str("refuse")))
    return tuple(out)


def parse_spec(data: Any, *, path: str) -> ArchitectureSpec:
    """A typed spec from one map file's JSON."""
    top = _Reader(data, path=path, where="")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > ARCH_SCHEMA_VERSION:
        raise ArchitectureMapError(f"'{path}' has schema_version {version!r}; this hubguard reads up to "
                                   f"{ARCH_SCHEMA_VERSION}. Upgrade hubguard to read it.")
    match, norm = top.child("match"), top.child("norm")
    config = _config(top.child("config"))
    moe = top.optional_child("moe")
    return ArchitectureSpec(
        family=top.str("family"), path=path, model_types=match.strings("model_type"),
        architectures=match.strings("architectures"), prefixes=tuple(_prefixes(top)),
        config=config, norm=NormSpec(type=norm.choice("type", NORM_TYPES), offset=_number(norm, "offset")),
        embedding=top.str("embedding"), layer_prefix=top.str("layer_prefix"),
        attention=_attention(top.child("attention"), path=path), ffn=_ffn(top.child("ffn"), path=path),
        conv1d=top.bool("conv1d"), notes=str(data.get("notes", "")),
        placement=top.choice("placement", PLACEMENTS, default="pre"), parallel=top.bool("parallel"),
        embedding_norm=top.optional_tensor("embedding_norm"), embedding_projection=top.optional_tensor("embedding_projection"),
        projection_after_norm=top.bool("projection_after_norm", default=True), hidden_space=top.strings("hidden_space"),
        output=_output(top.optional_child("output")), moe=None if moe is None else _moe(moe, path=path, config=config),
        requires=_requirements(top),
    )


def _prefixes(top: _Reader) -> tuple[str, ...]:
    value = top.data.get("prefixes", [""])
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise top.fail("prefixes", 'a non-empty list of strings ("" for none)')
    return tuple(value)


def _number(r: _Reader, key: str) -> float:
    value = r.data.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise r.fail(key, "a number")
    return float(value)
