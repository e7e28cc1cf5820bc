"""Where each tensor of a checkpoint sits — residual stream, heads, FFN units, experts — read from its
architecture map, so that one implementation of every output-preserving attack (`attacks_spec`) serves all
families. Names are the checkpoint's own (the ones the map's templates resolve to).

Conventions: a `Linear` is viewed in the [out, in] layout (Conv1D weights are stored [in, out]); the hidden
axis of a map reading the residual stream is its input axis, of a map writing into it its output axis. A
`Heads` entry gives, per head, the output rows (or, for o, the input columns) of a linear map that belong to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hubguard.weights.binding import BoundArchitecture
from hubguard.weights.canonical_ffn import routed_layout
from hubguard.weights.spec import ExpertTensors

if TYPE_CHECKING:
    import torch

    from hubguard.weights.spec import TensorRef


@dataclass(frozen=True)
class Linear:
    name: str
    bias: str | None
    conv1d: bool = False

    @property
    def in_axis(self) -> int:
        return 0 if self.conv1d else 1

    @property
    def out_axis(self) -> int:
        return 1 if self.conv1d else 0


@dataclass(frozen=True)
class NormGroup:
    """A norm and the maps reading its output: (tensor name, input axis)."""

    gain: str
    bias: str | None
    readers: tuple[tuple[str, int], ...]
    residual: bool  # its output is the residual stream itself (post-LN blocks, embedding norms): not foldable
    hidden: bool  # it lives in the hidden space (permuted with it)


@dataclass(frozen=True)
class Heads:
    """Rows of `linear` that belong to each head: index [heads, dims] into its output (or, for o, input) axis."""

    linear: Linear
    index: "torch.Tensor"


@dataclass
class AttentionParts:
    q: Heads
    k: Heads  # [KV, hd_qk] (MLA: [H, nope] inside kv_b)
    v: Heads  # [KV, hd_v]
    o: Heads  # columns [H, hd_v]
    kv_heads: int
    qk_dims: int  # per-head dimensions the QK product runs over (MLA: the part without rotary)
    rotary_dim: int  # leading per-head dimensions that carry rotary position (0: none)
    rotary: str | None  # "half" | "interleaved"
    q_block: Heads | None = None  # whole query heads where `q` is a part of them (MLA: rotary part included)
    kv_block: Heads | None = None  # whole key/value heads where `k`/`v` are parts of one block (MLA's kv_b)
    q_norm: tuple[str, ...] = ()  # gain names (one, or one per head)
    k_norm: tuple[str, ...] = ()
    qk_norm: str | None = None  # None | "rms" | "layer" | "free" (parameter-free L2/RMS)
    qk_scope: str = "head"


@dataclass
class Ffn:
    """One FFN: a dense layer's, one expert's, or a shared expert's. For fused 3-D experts, `fused` is
    (gate_up name, down name, expert index, layout)."""

    down: Linear | None = None
    up: Linear | None = None
    gate: Linear | None = None
    gate_up: Linear | None = None
    fused: tuple[str, str, int, str] | None = None
    shared: bool = False


@dataclass
class Moe:
    router: Linear
    experts: list[Ffn]
    router_bias: str | None = None
    fused: tuple[str, str, str] | None = None  # (gate_up, down, layout) when the routed experts are 3-D tensors
    split_names: list[list[str]] = field(default_factory=list)  # per expert: its tensor names (split layout)
    groups: int = 1


@dataclass
class LayerParts:
    index: int
    attention: AttentionParts
    ffns: list[Ffn]
    moe: Moe | None = None


@dataclass
class WeightRoles:
    arch: BoundArchitecture
    layers: list[LayerParts]
    norms: list[NormGroup]
    hidden: list[tuple[str, int]]  # every hidden-space tensor but the norms: (name, hidden axis); a name may repeat
    post_norms: list[str]  # gains of norms acting on sublayer outputs (hidden space)
    head_tied: bool  # no separate LM-head reader: the embedding is the head
    head_space: list[str] = field(default_factory=list)  # per-head tensors shared by all layers (last axis: heads)

    @property
    def gated(self) -> bool:
        return any(f.gate is not None or f.gate_up is not None or f.fused is not None for lay in self.layers for f in lay.ffns)


# --- building ---------------------------------------------------------------------------------------------------


def _linear(arch: BoundArchitecture, names: set[str], ref: "TensorRef | None", layer: int | None, *,
            expert: int | None = None) -> Linear | None:
    if ref is None:
        return None
    name = arch.lookup(ref, layer=layer, names=names, expert=expert)
    if name is None:
        return None
    bias = name.removesuffix("weight") + "bias" if name.endswith("weight") else None
    return Linear(name=name, bias=bias if bias in names else None, conv1d=arch.spec.conv1d)


def _bias_of(gain: str | None, names: set[str]) -> str | None:
    if gain is None or not gain.endswith("weight"):
        return None
    bias = gain.removesuffix("weight") + "bias"
    return bias if bias in names else None


def _arange(*shape: int, start: int = 0) -> "torch.Tensor":
    import math

    import torch

    return torch.arange(start, start + math.prod(shape)).reshape(*shape)


def _standard_heads(arch: BoundArchitecture, names: set[str], layer: int) -> tuple[Heads, Heads, Heads]:
    attn = arch.spec.attention
    H, KV, hd, rep = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.kv_group
    if attn.qkv is None:
        return (Heads(_linear(arch, names, attn.q, layer), _arange(H, hd)),  # type: ignore[arg-type]
                Heads(_linear(arch, names, attn.k, layer), _arange(KV, hd)),  # type: ignore[arg-type]
                Heads(_linear(arch, names, attn.v, layer), _arange(KV, hd)))  # type: ignore[arg-type]
    qkv = _linear(arch, names, attn.qkv, layer)
    assert qkv is not None
    if arch.qkv_layout == "concat":
        return (Heads(qkv, _arange(H, hd)), Heads(qkv, _arange(KV, hd, start=H * hd)),
                Heads(qkv, _arange(KV, hd, start=(H + KV) * hd)))
    block = _arange(KV, rep + 2, hd)
    return Heads(qkv, block[:, :rep].reshape(H, hd)), Heads(qkv, block[:, rep]), Heads(qkv, block[:, rep + 1])


def _qk_norm_names(arch: BoundArchitecture, names: set[str], layer: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    qk = arch.qk_norm
    if qk is None or qk.q.free:
        return (), ()
    out = []
    for ref, heads in ((qk.q, arch.num_heads), (qk.k, arch.num_kv_heads)):
        per_head = any("${head_index}" in t for t in ref.templates)
        out.append(tuple(arch.resolve(ref, layer=layer, names=names, head=h) for h in (range(heads) if per_head else [None])))
    return out[0], out[1]


def _attention(arch: BoundArchitecture, names: set[str], layer: int) -> tuple[AttentionParts, list[tuple[str, int]]]:
    """The layer's attention heads, and the hidden-space readers of its input norm."""
    attn = arch.spec.attention
    H = arch.num_heads
    o = _linear(arch, names, attn.o, layer)
    assert o is not None
    if attn.kind == "mla":
        nope, rope, hd_v = (int(arch.value(k)) for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
        low_rank = arch.value("q_lora_rank") is not None
        q_lin = _linear(arch, names, attn.q_b if low_rank else attn.q, layer)
        kv_b, kv_a = _linear(arch, names, attn.kv_b, layer), _linear(arch, names, attn.kv_a, layer)
        q_in = _linear(arch, names, attn.q_a, layer) if low_rank else q_lin
        assert q_lin is not None and kv_b is not None and kv_a is not None and q_in is not None
        kv_rows = _arange(H, nope + hd_v)
        parts = AttentionParts(q=Heads(q_lin, _arange(H, nope + rope)[:, :nope]), k=Heads(kv_b, kv_rows[:, :nope]),
                               v=Heads(kv_b, kv_rows[:, nope:]), o=Heads(o, _arange(H, hd_v)), kv_heads=H, qk_dims=nope,
                               rotary_dim=0, rotary=None, q_block=Heads(q_lin, _arange(H, nope + rope)),
                               kv_block=Heads(kv_b, kv_rows))
        return parts, [(q_in.name, q_in.in_axis), (kv_a.name, kv_a.in_axis)]
    q, k, v = _standard_heads(arch, names, layer)
    qk = arch.qk_norm
    q_norm, k_norm = _qk_norm_names(arch, names, layer)
    kind = None if qk is None else ("free" if qk.q.free else (qk.type or arch.spec.norm.type))
    parts = AttentionParts(q=q, k=k, v=v, o=Heads(o, _arange(H, arch.head_dim)), kv_heads=arch.num_kv_heads,
                           qk_dims=arch.head_dim, rotary_dim=arch.rotary_dim, rotary=attn.rotary, q_norm=q_norm,
                           k_norm=k_norm, qk_norm=kind, qk_scope=qk.scope if qk is not None else "head")
    readers = {(h.linear.name, h.linear.in_axis) for h in (q, k, v)}
    return parts, sorted(readers)


def _gated_ffn(arch: BoundArchitecture, names: set[str], refs: "ExpertTensors", layer: int, *, expert: int | None = None,
               shared: bool = False) -> Ffn:
    return Ffn(down=_linear(arch, names, refs.down, layer, expert=expert), up=_linear(arch, names, refs.up, layer, expert=expert),
               gate=_linear(arch, names, refs.gate, layer, expert=expert),
               gate_up=_linear(arch, names, refs.gate_up, layer, expert=expert), shared=shared)


def _ffn_readers(ffn: Ffn) -> list[tuple[str, int]]:
    out = [(lin.name, lin.in_axis) for lin in (ffn.gate, ffn.up, ffn.gate_up) if lin is not None]
    if ffn.fused is not None:
        out.append((ffn.fused[0], 2 if ffn.fused[3] == "out_in" else 1))
    return out


def _ffn_writers(ffn: Ffn) -> list[tuple[str, int]]:
    out = []
    if ffn.down is not None:
        out.append((ffn.down.name, ffn.down.out_axis))
        if ffn.down.bias:
            out.append((ffn.down.bias, 0))
    if ffn.fused is not None:
        out.append((ffn.fused[1], 1 if ffn.fused[3] == "out_in" else 2))
    return out


class _NameView:
    """What `canonical_ffn.routed_layout` asks of a reader: the bound map and the tensor names."""

    def __init__(self, arch: BoundArchitecture, names: set[str]) -> None:
        self.arch, self.names = arch, names


def _moe(arch: BoundArchitecture, names: set[str], layer: int) -> Moe:
    moe = arch.spec.moe
    assert moe is not None
    router = _linear(arch, names, moe.router, layer)
    assert router is not None
    bias = moe.router_bias if moe.router_bias is not None and arch.has(moe.router_bias, layer=layer, names=names) else None
    out = Moe(router=router, experts=[], router_bias=None if bias is None else arch.resolve(bias, layer=layer, names=names),
              groups=int(arch.value("expert_groups", 1) or 1))
    if routed_layout(_NameView(arch, names), layer) == "fused":  # type: ignore[arg-type]
        assert moe.fused is not None
        gu, dn = (arch.resolve(r, layer=layer, names=names) for r in (moe.fused.gate_up, moe.fused.down))
        out.fused = (gu, dn, moe.fused.layout)
        out.experts = [Ffn(fused=(gu, dn, e, moe.fused.layout)) for e in range(arch.num_experts)]
        return out
    assert moe.experts is not None
    for e in range(arch.num_experts):
        ffn = _gated_ffn(arch, names, moe.experts, layer, expert=e)
        out.experts.append(ffn)
        out.split_names.append([n for lin in (ffn.gate, ffn.up, ffn.gate_up, ffn.down) if lin is not None
                                for n in (lin.name, lin.bias) if n is not None])
    return out


def _layer_ffns(arch: BoundArchitecture, names: set[str], i: int) -> tuple[list[Ffn], Moe | None]:
    spec = arch.spec
    if arch.is_moe_layer(i):
        moe_parts = _moe(arch, names, i)
        ffns = list(moe_parts.experts)
        if spec.moe is not None and spec.moe.shared is not None and arch.has(spec.moe.shared.down, layer=i, names=names):
            ffns.append(_gated_ffn(arch, names, spec.moe.shared, i, shared=True))
        return ffns, moe_parts
    f = spec.ffn
    return [_gated_ffn(arch, names, ExpertTensors(down=f.down, gate=f.gate, up=f.up, gate_up=f.gate_up), i)], None


class _Builder:
    """Collects norm groups, hidden-space tensors and post-norms while walking the layers."""

    def __init__(self, arch: BoundArchitecture, names: set[str]) -> None:
        self.arch, self.names = arch, names
        self.groups: dict[str, dict] = {}
        self.hidden: list[tuple[str, int]] = []
        self.post: list[str] = []

    def group(self, gain: str | None, readers: list[tuple[str, int]], *, residual: bool, hidden: bool = True) -> None:
        if gain is None:
            return
        g = self.groups.setdefault(gain, {"readers": [], "residual": residual, "hidden": hidden})
        for r in readers:
            if r not in g["readers"]:
                g["readers"].append(r)
        g["residual"] = g["residual"] or residual

    def layer(self, i: int) -> LayerParts:
        arch, names, spec = self.arch, self.names, self.arch.spec
        residual = spec.placement == "post"
        attention, attn_readers = _attention(arch, names, i)
        a_norm = None if spec.attention.norm is None else arch.lookup(spec.attention.norm, layer=i, names=names)
        if i == 0 and arch.embedding_projected and spec.projection_after_norm:
            a_norm = None  # ELECTRA: layer 0 reads the projection directly
        self.group(a_norm, attn_readers, residual=residual)
        o = attention.o.linear
        self.hidden += attn_readers + [(o.name, o.out_axis)] + ([(o.bias, 0)] if o.bias else [])
        attn = spec.attention
        if attn.kind == "mla":
            pairs = [(attn.kv_a_norm, attn.kv_b)] + ([(attn.q_a_norm, attn.q_b)] if arch.value("q_lora_rank") is not None else [])
            for norm_ref, reader_ref in pairs:
                lin = _linear(arch, names, reader_ref, i)
                assert lin is not None and norm_ref is not None
                self.group(arch.lookup(norm_ref, layer=i, names=names), [(lin.name, lin.in_axis)], residual=False, hidden=False)
        if attn.post_norm is not None:
            self.post.append(arch.resolve(attn.post_norm, layer=i, names=names))
        ffns, moe_parts = _layer_ffns(arch, names, i)
        readers = [r for f in ffns for r in _ffn_readers(f)]
        if moe_parts is not None:
            readers.append((moe_parts.router.name, moe_parts.router.in_axis))
            gate = _linear(arch, names, spec.moe.shared_gate, i) if spec.moe is not None else None
            if gate is not None:
                readers.append((gate.name, gate.in_axis))
        f_norm = None if spec.ffn.norm is None else arch.lookup(spec.ffn.norm, layer=i, names=names)
        self.group(f_norm, readers, residual=residual)
        self.hidden += readers + [w for f in ffns for w in _ffn_writers(f)]
        if spec.ffn.post_norm is not None:
            self.post.append(arch.resolve(spec.ffn.post_norm, layer=i, names=names))
        return LayerParts(index=i, attention=attention, ffns=ffns, moe=moe_parts)

    def outputs(self) -> bool:
        """Add the embeddings, the other hidden-space tensors and the head; return whether the head is tied."""
        arch, names, spec = self.arch, self.names, self.arch.spec
        emb_norm = arch.lookup(spec.embedding_norm, layer=None, names=names) if spec.embedding_norm else None
        if arch.embedding_projected:
            proj = _linear(arch, names, spec.embedding_projection, None)
            assert proj is not None
            self.hidden += [(proj.name, proj.out_axis)] + ([(proj.bias, 0)] if proj.bias else [])
            if spec.projection_after_norm:
                self.group(emb_norm, [(proj.name, proj.in_axis)], residual=False, hidden=False)
            else:
                self.group(emb_norm, [], residual=True)
        else:
            self.hidden.append((arch.embedding_name, 1))
            self.group(emb_norm, [], residual=True)
        for h in spec.hidden_space:
            name = h.name if h.absolute else arch.name(h.name)
            if name in names:
                self.hidden.append((name, h.axis))
        heads = [(h, 1) for h in spec.output.head if h in names]
        writers = [w for w in spec.output.head_writers if w in names]
        self.hidden += heads + [(w, 0) for w in writers]
        vectors = [w.removesuffix("weight") + "bias" for w in writers]
        vectors += [x for vec in spec.output.head_vectors for x in (vec, _bias_of(vec, names)) if x is not None]
        self.hidden += [(v, 0) for v in vectors if v in names]
        if spec.output.norm is not None and not spec.output.norm.free:
            self.group(arch.lookup(spec.output.norm, layer=None, names=names), heads, residual=False)
        return not heads


def _last_dim(name: str, shapes: "dict[str, tuple[int, ...]]") -> int | None:
    shape = shapes.get(name)
    return shape[-1] if shape else None


def describe(*, arch: BoundArchitecture, shapes: "dict[str, tuple[int, ...]]") -> WeightRoles:
    """The roles of every tensor a spec-driven attack changes, for the checkpoint with these tensor shapes."""
    names = set(shapes)
    b = _Builder(arch, names)
    layers = [b.layer(i) for i in range(arch.num_layers)]
    if arch.spec.placement == "post" and arch.spec.attention.norm is not None:  # the last layer's output norm
        last = arch.lookup(arch.spec.attention.norm, layer=arch.num_layers, names=names)
        b.group(last, [(h, 1) for h in arch.spec.output.head if h in names], residual=True)
    tied = b.outputs()
    norms = [NormGroup(gain=g, bias=_bias_of(g, b.names), readers=tuple(v["readers"]), residual=v["residual"], hidden=v["hidden"])
             for g, v in b.groups.items()]
    hidden = list(dict.fromkeys(b.hidden))  # a tied MLM head's transform is both a reader and a writer
    if arch.embedding_projected:  # position/type embeddings are added before the projection: embedding space
        hidden = [(n, a) for n, a in hidden if n == arch.embedding_name or _last_dim(n, shapes) == arch.hidden_size
                  or a != -1]
    head_space = [arch.name(t) for t in arch.spec.head_space if arch.name(t) in names]
    return WeightRoles(arch=arch, layers=layers, norms=norms, hidden=hidden, post_norms=b.post, head_tied=tied,
                       head_space=head_space)
