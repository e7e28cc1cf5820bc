"""Realign to the base: the adaptive attack on symmetry locks (the Anchor-Guided Attack, June 2026).

Attention computes the same function for (G·Wq, G⁻ᵀ·Wk) and (G·Wv, Wo·G⁻¹), for any invertible G per key/value
head. An attacker who holds the public base W₀ fits, per key/value head, the map G that takes the base's
projections to the released ones by least squares over the head's query heads (rotary maps: a scaled rotation per
RoPE plane, the maps that commute with the position rotations), and applies its inverse on both sides:

    Wq ← G⁻¹·Wq,  bq ← G⁻¹·bq,  Wk ← Gᵀ·Wk,  bk ← Gᵀ·bk      (G fitted on q)
    Wv ← G⁻¹·Wv,  bv ← G⁻¹·bv,  Wo[:, heads] ← Wo[:, heads]·G  (G fitted on v)

Function-preserving for any fitted G, so it costs the attacker nothing at s = 1. It removes a scale lock
(`hubguard.protect.lock`) exactly, whatever the update under it: the fit is linear in the released weights, so a
lock's map L comes out as a factor (G_fit(L·X) = L·G_fit(X)) and realign(lock(X)) = realign(X). A lock therefore
adds nothing against this attacker; what is left is whatever the update X itself does under a merge (its own
trap). `realign_layer` is written with plain torch operations (differentiable in the weights);
`realign_state_dict` applies it to a whole checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from hubguard.weights.binding import BoundArchitecture, bind_architecture

# Keys of one layer's attention tensors in `realign_layer`'s mappings.
PROJECTIONS = ("q", "k", "v", "o")
BIASES = ("q_bias", "k_bias", "v_bias")


@dataclass(frozen=True)
class HeadLayout:
    """The head geometry realign needs: query heads, key/value heads, head size, RoPE planes or not."""

    heads: int
    kv_heads: int
    head_dim: int
    rotary: bool

    @classmethod
    def of(cls, bound: BoundArchitecture) -> HeadLayout:
        return cls(bound.num_heads, bound.num_kv_heads, bound.head_dim, bound.spec.attention.rotary == "half")

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def attention_names(bound: BoundArchitecture, layer: int, names: set[str]) -> dict[str, str]:
    """Tensor names of layer `layer`'s q/k/v/o projection weights, by the architecture map."""
    attn = bound.spec.attention
    refs = {"q": attn.q, "k": attn.k, "v": attn.v, "o": attn.o}
    return {r: bound.resolve(ref, layer=layer, names=names) for r, ref in refs.items() if ref is not None}


def fit_maps(new: torch.Tensor, old: torch.Tensor, *, group: int, rotary: bool) -> torch.Tensor:
    """G (kv, D, D) minimising Σ ||G_j·old_a − new_a||² over the `group` heads a of each key/value head j.

    new, old: (kv·group, D, in) stacked head rows. Rotary: G_j is a scaled rotation on each plane (i, i + D/2).
    """
    heads, d, width = old.shape
    new4 = new.reshape(heads // group, group, d, width)  # (kv, group, D, in)
    old4 = old.reshape(heads // group, group, d, width)
    if not rotary:
        cross = torch.einsum("jadi,jaei->jde", new4, old4)  # (kv, D, D)
        gram = torch.einsum("jadi,jaei->jde", old4, old4)
        ridge = 1e-8 * gram.diagonal(dim1=1, dim2=2).sum(-1) / d  # (kv,)
        eye = torch.eye(d, dtype=old.dtype, device=old.device)
        return torch.linalg.solve(gram + ridge[:, None, None] * eye, cross.transpose(1, 2)).transpose(1, 2)
    half = d // 2
    z_old = torch.complex(old4[:, :, :half], old4[:, :, half:])  # (kv, group, D/2, in)
    z_new = torch.complex(new4[:, :, :half], new4[:, :, half:])
    c = (z_old.conj() * z_new).sum((1, 3)) / (z_old.abs() ** 2).sum((1, 3)).clamp(min=1e-12)  # (kv, D/2)
    g = torch.zeros(heads // group, d, d, dtype=old.dtype, device=old.device)
    idx = torch.arange(half, device=old.device)
    g[:, idx, idx], g[:, idx + half, idx + half] = c.real, c.real
    g[:, idx + half, idx], g[:, idx, idx + half] = c.imag, -c.imag
    return g


def realign_layer(
    weights: Mapping[str, torch.Tensor], *, base_q: torch.Tensor, base_v: torch.Tensor, layout: HeadLayout
) -> dict[str, torch.Tensor]:
    """One layer's attention tensors (keys PROJECTIONS, and BIASES when present) realigned to the base's q and v.

    Pure torch operations (no in-place writes to the inputs): differentiable in `weights`.
    """
    d, kv, group = layout.head_dim, layout.kv_heads, layout.group
    q = weights["q"].reshape(kv * group, d, -1)  # (heads, D, in)
    v = weights["v"].reshape(kv, d, -1)  # (kv, D, in)
    g_q = fit_maps(q, base_q.reshape(kv * group, d, -1).to(q.dtype), group=group, rotary=layout.rotary)  # (kv, D, D)
    g_v = fit_maps(v, base_v.reshape(kv, d, -1).to(v.dtype), group=1, rotary=False)
    inv_q, inv_v = torch.linalg.inv(g_q), torch.linalg.inv(g_v)
    out = dict(weights)
    out["q"] = torch.einsum("jde,jaei->jadi", inv_q, q.reshape(kv, group, d, -1)).reshape(weights["q"].shape)
    out["k"] = torch.einsum("jed,jei->jdi", g_q, weights["k"].reshape(kv, d, -1)).reshape(weights["k"].shape)
    out["v"] = torch.einsum("jde,jei->jdi", inv_v, v).reshape(weights["v"].shape)
    o = weights["o"].reshape(weights["o"].shape[0], kv, group, d)  # (out, kv, group, D): o's columns per query head
    out["o"] = torch.einsum("ojae,jed->ojad", o, g_v).reshape(weights["o"].shape)
    if weights.get("q_bias") is not None:
        out["q_bias"] = torch.einsum("jde,jae->jad", inv_q, weights["q_bias"].reshape(kv, group, d)).reshape(-1)
    if weights.get("k_bias") is not None:
        out["k_bias"] = torch.einsum("jed,je->jd", g_q, weights["k_bias"].reshape(kv, d)).reshape(-1)
    if weights.get("v_bias") is not None:
        out["v_bias"] = torch.einsum("jde,je->jd", inv_v, weights["v_bias"].reshape(kv, d)).reshape(-1)
    return out


def layer_tensor_names(bound: BoundArchitecture, layer: int, names: set[str]) -> dict[str, str]:
    """`realign_layer`'s keys -> tensor names of one layer (biases only where the checkpoint has them)."""
    lay = attention_names(bound, layer, names)
    out = {r: lay[r] for r in PROJECTIONS}
    for r in ("q", "k", "v"):
        bias = lay[r].removesuffix("weight") + "bias"
        if bias in names:
            out[f"{r}_bias"] = bias
    return out


@torch.no_grad()
def realign_state_dict(
    weights: Mapping[str, torch.Tensor], *, base: Mapping[str, torch.Tensor], model_config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The attack on a lock, on a whole checkpoint: every layer realigned to `base` (`realign_layer`). Layers whose
    attention tensors are the base's, bit for bit, are left as they are (G = I exactly)."""
    bound = bind_architecture(config=dict(model_config), tensor_names=list(weights), source="realign")
    names = set(weights)
    layout = HeadLayout.of(bound)
    out = dict(weights)
    for i in range(bound.num_layers):
        keys = layer_tensor_names(bound, i, names)
        if all(torch.equal(weights[n], base[n]) for n in keys.values() if n in base):
            continue
        layer = {k: weights[n].float() for k, n in keys.items()}
        new = realign_layer(layer, base_q=base[keys["q"]].float(), base_v=base[keys["v"]].float(), layout=layout)
        out.update({n: new[k].to(weights[n].dtype).contiguous() for k, n in keys.items()})
    return out


__all__ = ["HeadLayout", "attention_names", "fit_maps", "layer_tensor_names", "realign_layer", "realign_state_dict"]
