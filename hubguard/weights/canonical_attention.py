"""Canonical attention: q, k [H, hd_qk, d], v [H, hd_v, d], o [H, d, hd_v] from a layer's tensors.

Standard attention reads q/k/v (or a fused qkv) and o. Its query/key norms (RMSNorm or LayerNorm over each
head's dimensions, or over all heads at once) are folded as q_h ← diag(γq_h)·u(P q_h), k_h ← diag(γk_h)·u(P k_h),
with u(·) the unit-RMS scale (the norm makes the projection's scale irrelevant) and P the LayerNorm centring
over the normalised dimensions: so Wq_hᵀ Wk_h carries γq ⊙ γk, and a rescale of the gains that keeps every
γq_i·γk_i (tied on each rotary plane, so it commutes with the rotation) changes nothing.

Multi-head latent attention (DeepSeek V2/V3) is multiplied out. With c = u(Wkv_a[:r]·diag(γ)) the key/value
latent map (its RMSNorm makes the scale free) and Wkv_b = [k_nope_h; v_h] per head:
    q_h = (Wq_b·diag(γq_a)·u(Wq_a·diag(γ)))_h[:nope]      (or Wq·diag(γ) without a query latent)
    k_h = Wkv_b,h[:nope]·diag(γkv_a)·c                     v_h = Wkv_b,h[nope:]·diag(γkv_a)·c
The QK term therefore covers the part of each head without rotary position (the rotary key is shared by
all heads and position-dependent), the VO term kv_b's value part with o_proj.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubguard.errors import CorruptCheckpointError
from hubguard.weights.canonical_layer import unit_rms

if TYPE_CHECKING:
    import torch

    from hubguard.weights.canonical import LayerReader


def _refs(reader: "LayerReader") -> list:
    a = reader.arch.spec.attention
    if a.kind == "mla":
        low_rank_q = reader.arch.value("q_lora_rank") is not None
        q_refs = [a.q_a, a.q_a_norm, a.q_b] if low_rank_q else [a.q]
        return [a.norm, *q_refs, a.kv_a, a.kv_a_norm, a.kv_b, a.o, a.post_norm]
    return [a.norm, a.q, a.k, a.v, a.qkv, a.o, a.post_norm]


def _qk_norm_names(reader: "LayerReader", layer: int) -> list[str]:
    qk = reader.arch.qk_norm
    if qk is None:
        return []
    out = []
    for ref, heads in ((qk.q, reader.arch.num_heads), (qk.k, reader.arch.num_kv_heads)):
        per_head = any("${head_index}" in t for t in ref.templates)
        out += [reader.arch.resolve(ref, layer=layer, names=reader.names, head=h) for h in (range(heads) if per_head else [None])]
    return out


def attention_names(reader: "LayerReader", layer: int) -> list[str]:
    names = [reader.name_of(r, layer) for r in _refs(reader) if r is not None]
    return [n for n in names if n is not None] + _qk_norm_names(reader, layer)


# --- standard attention ---------------------------------------------------------------------------------------


def _split_qkv(reader: "LayerReader", layer: int) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """q [H, hd, d], k and v [KV, hd, d], before any norm is folded."""
    arch, attn = reader.arch, reader.arch.spec.attention
    H, KV, hd = arch.num_heads, arch.num_kv_heads, arch.head_dim
    if attn.qkv is None:
        return (reader.heads(reader.matrix(attn.q, layer), H, layer, "query"),
                reader.heads(reader.matrix(attn.k, layer), KV, layer, "key"),
                reader.heads(reader.matrix(attn.v, layer), KV, layer, "value"))
    qkv = reader.matrix(attn.qkv, layer)
    if arch.qkv_layout == "concat":
        sizes = [H * hd, KV * hd, KV * hd]
        if qkv.shape[0] != sum(sizes):
            raise CorruptCheckpointError(f"Fused QKV of layer {layer} has {qkv.shape[0]} rows, expected {sum(sizes)}.")
        q, k, v = qkv.split(sizes, dim=0)
        return q.reshape(H, hd, -1), k.reshape(KV, hd, -1), v.reshape(KV, hd, -1)
    rep = H // KV  # grouped: [KV, H/KV + 2, hd, d]
    if qkv.shape[0] != KV * (rep + 2) * hd:
        raise CorruptCheckpointError(f"Fused QKV of layer {layer} has {qkv.shape[0]} rows, expected {KV * (rep + 2) * hd}.")
    g = qkv.reshape(KV, rep + 2, hd, -1)
    return g[:, :rep].reshape(H, hd, -1), g[:, rep], g[:, rep + 1]


def _qk_gains(reader: "LayerReader", layer: int, *, which: str, heads: int) -> "torch.Tensor":
    """The query (or key) norm gain as [heads, hd]: one shared vector, a [heads, hd] gain, a full-width
    [heads * hd] gain, or one norm per head (`${head_index}` templates)."""
    import torch

    qk = reader.arch.qk_norm
    assert qk is not None
    ref, hd = (qk.q if which == "q" else qk.k), reader.arch.head_dim
    if any("${head_index}" in t for t in ref.templates):
        gains = [reader.gain(ref, layer, head=h) for h in range(heads)]
        g = torch.stack([x.reshape(-1) for x in gains if x is not None])
    else:
        found = reader.gain(ref, layer)
        assert found is not None
        g = found
    if g.numel() == hd:
        return g.reshape(1, hd).expand(heads, hd)
    if g.numel() == heads * hd:
        return g.reshape(heads, hd)
    raise CorruptCheckpointError(f"Layer {layer}: the {which}-norm gain has {g.numel()} entries; config.json says "
                                 f"{heads} heads of {hd} dimensions (expected {hd} or {heads * hd}). Fix config.json.")


def apply_qk_norm(reader: "LayerReader", layer: int, w: "torch.Tensor", *, which: str, heads: int) -> "torch.Tensor":
    """Fold the query (or key) norm into w [n, hd, d] (the first n of `heads` heads; see the module docstring)."""
    qk = reader.arch.qk_norm
    if qk is None or not reader.fold_norms:
        return w
    n = w.shape[0]
    gain = _qk_gains(reader, layer, which=which, heads=heads)[:n]
    centre = (qk.type or reader.arch.spec.norm.type) == "layer"
    if qk.scope == "head":
        if centre:
            w = w - w.mean(dim=1, keepdim=True)
        w = w / w.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-12)
    else:
        if centre:
            w = w - w.mean(dim=(0, 1), keepdim=True)
        w = unit_rms(w)  # over the heads read (a tight budget reads a few): a global factor the terms ignore
    return w * gain[:, :, None]


def read_output(reader: "LayerReader", layer: int, *, heads: int, hd_v: int) -> "torch.Tensor":
    """o [H, d, hd_v] (a post-norm's gain on its rows, at unit RMS)."""
    attn, d = reader.arch.spec.attention, reader.arch.hidden_size
    o = reader.matrix(attn.o, layer)  # [d, H*hd_v]
    if o.shape != (d, heads * hd_v):
        raise CorruptCheckpointError(f"Layer {layer}: output projection is {list(o.shape)}, expected {[d, heads * hd_v]}.")
    o = reader.scale_free(o, reader.gain(attn.post_norm, layer))
    return o.reshape(d, heads, hd_v).permute(1, 0, 2).contiguous()


def read_attention(reader: "LayerReader", layer: int) -> "tuple[torch.Tensor, ...]":
    """(q, k, v, o, kv_heads) of one layer, canonical (see the module docstring)."""
    arch = reader.arch
    if arch.spec.attention.kind == "mla":
        return read_mla(reader, layer)
    H, KV, d = arch.num_heads, arch.num_kv_heads, arch.hidden_size
    q, k, v = _split_qkv(reader, layer)
    if q.shape[-1] != d:
        raise CorruptCheckpointError(f"Layer {layer}: attention inputs are {q.shape[-1]} wide, hidden size is {d}.")
    norm = reader.input_norm(arch.spec.attention.norm, layer)
    q, k, v = reader.fold(q, norm), reader.fold(k, norm), reader.fold(v, norm)
    q = apply_qk_norm(reader, layer, q, which="q", heads=H)
    k = apply_qk_norm(reader, layer, k, which="k", heads=KV)
    if KV != H:
        k = k.repeat_interleave(H // KV, dim=0)
        v = v.repeat_interleave(H // KV, dim=0)
    return q, k, v, read_output(reader, layer, heads=H, hd_v=arch.head_dim), KV


def _slice_rows(reader: "LayerReader", layer: int, *, kv_heads: int) -> "tuple[torch.Tensor, torch.Tensor]":
    arch, attn = reader.arch, reader.arch.spec.attention
    H, hd, d, rep = arch.num_heads, arch.head_dim, arch.hidden_size, arch.kv_group
    if attn.qkv is None:
        assert attn.q is not None and attn.k is not None
        q = reader.tensors.get_rows(arch.resolve(attn.q, layer=layer, names=reader.names), list(range(kv_heads * rep * hd)))
        k = reader.tensors.get_rows(arch.resolve(attn.k, layer=layer, names=reader.names), list(range(kv_heads * hd)))
        return q, k
    name = arch.resolve(attn.qkv, layer=layer, names=reader.names)
    if arch.qkv_layout == "concat":
        rows = list(range(kv_heads * rep * hd)) + list(range(H * hd, H * hd + kv_heads * hd))
        block = reader.tensors.get_rows(name, rows)
        return block[: kv_heads * rep * hd], block[kv_heads * rep * hd :]
    block = reader.tensors.get_rows(name, list(range(kv_heads * (rep + 2) * hd))).reshape(kv_heads, rep + 2, hd, d)
    return block[:, :rep].reshape(-1, d), block[:, rep].reshape(-1, d)


def read_qk_slices(reader: "LayerReader", layer: int, *, kv_heads: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """q [n, hd, d] and k [n, hd, d] (expanded) of the first `kv_heads` key heads and their query heads."""
    arch = reader.arch
    hd, d, rep = arch.head_dim, arch.hidden_size, arch.kv_group
    kv_heads = max(1, min(kv_heads, arch.num_kv_heads))
    q, k = _slice_rows(reader, layer, kv_heads=kv_heads)
    norm = reader.input_norm(arch.spec.attention.norm, layer)
    q = reader.fold(q, norm).reshape(kv_heads * rep, hd, d)
    k = reader.fold(k, norm).reshape(kv_heads, hd, d)
    q = apply_qk_norm(reader, layer, q, which="q", heads=arch.num_heads)
    k = apply_qk_norm(reader, layer, k, which="k", heads=arch.num_kv_heads)
    return q, k.repeat_interleave(rep, dim=0)


def head_slice_bytes(reader: "LayerReader", layer: int, *, kv_heads: int) -> int:
    """Bytes `read_qk_slices` reads for `kv_heads` key heads (and their query heads), norms included."""
    arch, attn = reader.arch, reader.arch.spec.attention
    hd, d, rep = arch.head_dim, arch.hidden_size, arch.kv_group
    name = arch.resolve(attn.qkv or attn.q, layer=layer, names=reader.names)
    itemsize = reader.tensors.info(name).itemsize
    grouped = attn.qkv is not None and arch.qkv_layout == "grouped"
    rows = kv_heads * (rep + 2) * hd if grouped else kv_heads * (rep + 1) * hd  # grouped blocks carry V too
    norms = [n for n in [reader.name_of(attn.norm, layer)] + _qk_norm_names(reader, layer) if n is not None]
    return rows * d * itemsize + sum(reader.tensors.info(n).stop - reader.tensors.info(n).start for n in norms)


# --- multi-head latent attention ------------------------------------------------------------------------------


def _mla_dims(reader: "LayerReader") -> tuple[int, int, int, int]:
    arch = reader.arch
    dims = [arch.value(k) for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "kv_lora_rank")]
    if any(x is None for x in dims):
        raise CorruptCheckpointError(f"'{arch.family}': config.json lacks the latent-attention sizes (qk_nope_head_dim, "
                                     "qk_rope_head_dim, v_head_dim, kv_lora_rank). Fix config.json.")
    return tuple(int(x) for x in dims)  # type: ignore[return-value]


def _rows(w: "torch.Tensor", rows: int, *, layer: int, what: str) -> None:
    if w.shape[0] != rows:
        raise CorruptCheckpointError(f"Layer {layer}: {what} has {w.shape[0]} rows; config.json implies {rows}. "
                                     "Fix config.json (it must be the model's own).")


def read_mla(reader: "LayerReader", layer: int) -> "tuple[torch.Tensor, ...]":
    """(q, k, v, o, kv_heads) of a latent-attention layer (see the module docstring)."""
    arch, attn = reader.arch, reader.arch.spec.attention
    H, d = arch.num_heads, arch.hidden_size
    nope, rope, hd_v, rank = _mla_dims(reader)
    norm = reader.input_norm(attn.norm, layer)
    if arch.value("q_lora_rank") is not None:
        q_a = reader.fold(reader.matrix(attn.q_a, layer), norm)  # [rq, d]
        q_a = unit_rms(q_a) if reader.fold_norms else q_a
        g = reader.gain(attn.q_a_norm, layer)
        q_b = reader.matrix(attn.q_b, layer)  # [H*(nope+rope), rq]
        wq = q_b @ (q_a * g[:, None] if g is not None and reader.fold_norms else q_a)
    else:
        wq = reader.fold(reader.matrix(attn.q, layer), norm)
    _rows(wq, H * (nope + rope), layer=layer, what="the query projection")
    q = wq.reshape(H, nope + rope, d)[:, :nope].contiguous()
    kv_a = reader.matrix(attn.kv_a, layer)  # [rank + rope, d]
    _rows(kv_a, rank + rope, layer=layer, what="kv_a_proj_with_mqa")
    latent = reader.fold(kv_a[:rank], norm)
    latent = unit_rms(latent) if reader.fold_norms else latent
    g = reader.gain(attn.kv_a_norm, layer)
    if g is not None and reader.fold_norms:
        latent = latent * g[:, None]
    kv_b = reader.matrix(attn.kv_b, layer)  # [H*(nope+hd_v), rank]
    _rows(kv_b, H * (nope + hd_v), layer=layer, what="kv_b_proj")
    kv_b = kv_b.reshape(H, nope + hd_v, rank)
    k = kv_b[:, :nope] @ latent  # [H, nope, d]
    v = kv_b[:, nope:] @ latent  # [H, hd_v, d]
    return q, k, v, read_output(reader, layer, heads=H, hd_v=hd_v), H
