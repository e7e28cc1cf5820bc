"""The typed schema of architecture maps (frozen dataclasses); see `hubguard.weights.spec`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ARCH_SCHEMA_VERSION = 2
TEMPLATE = re.compile(r"\$\{(layer_index|prev_layer_index|expert_index|head_index)\}")
NORM_TYPES = ("rms", "layer")
FFN_TYPES = ("gated", "plain")
QKV_LAYOUTS = ("concat", "grouped")
ROTARY_LAYOUTS = ("half", "interleaved")
QK_NORM_SCOPES = ("head", "full")
PLACEMENTS = ("pre", "post")
EXPERT_LAYOUTS = ("out_in", "in_out")  # fused 3-D experts: [E, out, in] (transformers 5) or [E, in, out] (Llama 4)
MOE_LAYER_RULES = ("all", "from", "every", "list")

Conditions = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class TensorRef:
    """One map entry: alternative name templates (first present wins; `conditions[i]` must hold in the config
    for `templates[i]` to count), and what layer 0 reads instead (`first_layer`; an empty ref: nothing)."""

    templates: tuple[str, ...]
    first_layer: "TensorRef | None" = None
    conditions: tuple[Conditions, ...] = ()
    free: bool = False  # a norm without parameters sits here (OLMo's LayerNorm): nothing to read, centring still applies

    @property
    def empty(self) -> bool:
        return not self.templates

    def options(self) -> tuple[tuple[str, Conditions], ...]:
        conds = self.conditions or ((),) * len(self.templates)
        return tuple(zip(self.templates, conds))


@dataclass(frozen=True)
class ConfigRule:
    """Where a config value comes from: `key`, or a fixed `value`, when every `when` item matches."""

    key: str | None = None
    value: Any = None
    when: Conditions = ()


@dataclass(frozen=True)
class ConfigSpec:
    hidden_size: tuple[ConfigRule, ...]
    num_layers: tuple[ConfigRule, ...]
    num_heads: tuple[ConfigRule, ...]
    num_kv_heads: tuple[ConfigRule, ...] = ()
    head_dim: tuple[ConfigRule, ...] = ()
    values: tuple[tuple[str, tuple[ConfigRule, ...]], ...] = ()  # named family values (num_experts, rotary_dim, ...)

    def rules(self, name: str) -> tuple[ConfigRule, ...]:
        return dict(self.values).get(name, ())


@dataclass(frozen=True)
class NormSpec:
    type: str  # "rms" | "layer"
    offset: float = 0.0  # gain = weight + offset (Gemma stores 1 + w as w)


@dataclass(frozen=True)
class QkNormSpec:
    """Norms on the query/key projections' outputs (before rotary): per head over head_dim ("head"; one gain
    vector shared by the heads, a [heads, head_dim] gain, or one norm per head via `${head_index}`), or over all
    heads at once ("full", OLMo 2). Present only when `when` holds in the config."""

    q: TensorRef
    k: TensorRef
    scope: str = "head"
    when: Conditions = ()
    type: str | None = None  # default: the family's norm type


@dataclass(frozen=True)
class AttentionSpec:
    norm: TensorRef | None  # None: the attention reads the residual stream without a norm (OLMo 2)
    o: TensorRef
    q: TensorRef | None = None
    k: TensorRef | None = None
    v: TensorRef | None = None
    qkv: TensorRef | None = None  # fused
    qkv_layout: tuple[ConfigRule, ...] = ()  # "concat" [q; k; v] | "grouped" [kv, heads/kv + 2, hd], maybe by config
    rotary: str | None = None  # "half": planes pair dimension i with i + r/2; "interleaved": 2i with 2i + 1
    qk_norm: QkNormSpec | None = None
    post_norm: TensorRef | None = None  # a norm on the attention output, before the residual add (Gemma 2, OLMo 2)
    # multi-head latent attention (DeepSeek V2/V3): low-rank query and key/value paths with norms in the latent
    q_a: TensorRef | None = None
    q_a_norm: TensorRef | None = None
    q_b: TensorRef | None = None
    kv_a: TensorRef | None = None
    kv_a_norm: TensorRef | None = None
    kv_b: TensorRef | None = None

    @property
    def fused(self) -> bool:
        return self.qkv is not None

    @property
    def kind(self) -> str:
        """"standard" (q/k/v or fused qkv) or "mla" (low-rank latent attention)."""
        return "mla" if self.kv_b is not None else "standard"


@dataclass(frozen=True)
class FfnSpec:
    type: str  # "gated" | "plain"
    norm: TensorRef | None
    down: TensorRef
    up: TensorRef | None = None
    gate: TensorRef | None = None
    gate_up: TensorRef | None = None  # fused [gate; up]
    post_norm: TensorRef | None = None  # a norm on the FFN output, before the residual add


@dataclass(frozen=True)
class ExpertTensors:
    """One gated FFN's tensors: `gate` and `up` (or fused `gate_up`, [gate; up]) and `down`."""

    down: TensorRef
    gate: TensorRef | None = None
    up: TensorRef | None = None
    gate_up: TensorRef | None = None


@dataclass(frozen=True)
class FusedExperts:
    """All routed experts of a layer in two 3-D tensors: gate_up [E, 2f, d] and down [E, d, f] ("out_in"), or
    gate_up [E, d, 2f] and down [E, f, d] ("in_out", Llama 4)."""

    gate_up: TensorRef
    down: TensorRef
    layout: str = "out_in"


@dataclass(frozen=True)
class MoeLayers:
    """Which layers are MoE: every one ("all"), those from `key` on ("from", DeepSeek's first_k_dense_replace),
    those whose (index + 1) is a multiple of `key` and not listed in `except_key` ("every", Qwen-MoE), or those
    listed in `key` ("list", Llama 4's moe_layers)."""

    rule: str = "all"
    key: str | None = None
    except_key: str | None = None


@dataclass(frozen=True)
class MoeSpec:
    """A mixture-of-experts FFN: a router [E, d] reading the FFN norm's output, E routed experts (per-expert
    templates with `${expert_index}`, or `fused` 3-D tensors), optional always-on shared experts (with an optional
    sigmoid gate [1, d]). The number of experts and the expert groups come from the config values `num_experts`
    and `expert_groups`."""

    router: TensorRef
    layers: MoeLayers = MoeLayers()
    experts: ExpertTensors | None = None
    fused: FusedExperts | None = None
    shared: ExpertTensors | None = None
    shared_gate: TensorRef | None = None
    router_bias: TensorRef | None = None  # DeepSeek V3's e_score_correction_bias (selection only)


@dataclass(frozen=True)
class OutputSpec:
    """What reads the last hidden state: the final norm and the head (absolute names, outside the prefix):
    `head` reads the hidden state; `head_writers` write back into hidden-sized space (a tied MLM head's
    transform); `head_vectors` are hidden-sized vectors there (that transform's norm). Used by the red-team
    attacks and their logits checks; the fingerprint never reads them."""

    norm: TensorRef | None = None
    head: tuple[str, ...] = ()
    head_writers: tuple[str, ...] = ()
    head_vectors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Requirement:
    """A config the family's map cannot read correctly: refused with `message` when `when` holds."""

    when: Conditions
    message: str


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
    placement: str = "pre"  # "pre": norms feed sublayers; "post": a norm's output is the residual stream (BERT)
    parallel: bool = False  # attention and FFN read one norm's output and add to the residual together
    embedding_norm: TensorRef | None = None  # the norm applied to the embeddings (BERT, ModernBERT, ELECTRA)
    embedding_projection: TensorRef | None = None  # [hidden, embedding_size] when they differ (ELECTRA, DeBERTa)
    projection_after_norm: bool = True  # ELECTRA: norm, then projection; DeBERTa: projection, then norm
    hidden_space: tuple[str, ...] = ()  # other hidden-sized tensors (position/type embeddings, ...): attacks only
    output: OutputSpec = OutputSpec()
    moe: MoeSpec | None = None
    requires: tuple[Requirement, ...] = field(default_factory=tuple)

    def names(self, *, model_type: str | None, architectures: list[str]) -> bool:
        """True when a config's `model_type` or one of its `architectures` is named by this map."""
        return (model_type is not None and model_type in self.model_types) or bool(set(architectures) & set(self.architectures))
