"""Hidden-space attacks on a checkpoint's tensors, driven by its architecture map (`attacks_roles`):
permutation of the hidden dimensions, orthogonal rotation (after folding the norm gains, where the norms allow
it), per-dimension rescaling of every folded norm's gains, and rescaling of query/key-norm gains tied on each
rotary plane. Each function changes `tensors` (name -> tensor, the checkpoint's state dict) in place.

Row-vector convention: the hidden state h becomes h·R; every tensor with a hidden axis is multiplied by R
along it (readers W[out, d] -> W·R, writers W[d, in] -> Rᵀ·W and their biases b -> b·R, embeddings E -> E·R).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hubguard.errors import HubguardError
from hubguard.redteam.attacks_roles import WeightRoles

if TYPE_CHECKING:
    import torch

LOW, HIGH = 0.25, 4.0  # per-dimension scales are drawn log-uniformly in [LOW, HIGH]


def along(t: "torch.Tensor", axis: int, fn) -> "torch.Tensor":  # noqa: ANN001 - fn: last-axis tensor -> tensor
    """fn applied to `t` with `axis` moved last (and moved back)."""
    import torch

    return torch.movedim(fn(torch.movedim(t, axis, -1)), -1, axis).contiguous()


def log_uniform(n: int, generator: "torch.Generator") -> "torch.Tensor":
    import torch

    return torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(LOW), math.log(HIGH), generator=generator))


def _hidden_norm_tensors(roles: WeightRoles) -> list[str]:
    names = [n for g in roles.norms if g.hidden for n in (g.gain, g.bias) if n is not None]
    return names + roles.post_norms


def _map_hidden(tensors: dict, roles: WeightRoles, right: "torch.Tensor", *, norms: bool) -> None:
    items = list(roles.hidden) + ([(n, 0) for n in _hidden_norm_tensors(roles)] if norms else [])
    for name, axis in items:
        t = tensors[name]
        tensors[name] = along(t.double(), axis, lambda x: x @ right).to(t.dtype)


def permute_hidden(tensors: dict, roles: WeightRoles, *, generator: "torch.Generator") -> None:
    """Permute the hidden dimensions everywhere (norm gains and biases, post-norms and embeddings alike)."""
    import torch

    d = roles.arch.hidden_size
    perm = torch.randperm(d, generator=generator)
    _map_hidden(tensors, roles, torch.eye(d, dtype=torch.float64)[:, perm], norms=True)


def rotation_blockers(roles: WeightRoles) -> list[str]:
    """Why no hidden rotation preserves this model's outputs (empty: one does)."""
    why = []
    if any(g.residual and g.hidden for g in roles.norms):
        why.append("a norm's output is the residual stream (post-LayerNorm block or embedding norm)")
    if roles.post_norms:
        why.append("norms act on sublayer outputs (post-norms)")
    if any(g.hidden and g.bias is not None for g in roles.norms):
        why.append("LayerNorm biases")
    if any(g.hidden and not g.readers for g in roles.norms):
        why.append("a norm gain has no map to fold into (tied LM head)")
    return why


def _fold_gains(tensors: dict, roles: WeightRoles) -> None:
    """Every hidden-space norm gain multiplied into the maps reading it; the gains become 1."""
    offset = roles.arch.spec.norm.offset
    for g in roles.norms:
        if not g.hidden:
            continue
        gain = tensors[g.gain].double() + offset
        for name, axis in g.readers:
            t = tensors[name]
            tensors[name] = along(t.double(), axis, lambda x, s=gain: x * s).to(t.dtype)
        tensors[g.gain] = (tensors[g.gain] * 0 + 1 - offset).to(tensors[g.gain].dtype)


def random_orthogonal(d: int, generator: "torch.Generator", *, keep_ones: bool) -> "torch.Tensor":
    """A random orthogonal [d, d] matrix (fixing the all-ones vector when `keep_ones`, so it commutes with
    LayerNorm's centring)."""
    import torch

    def haar(n: int) -> torch.Tensor:
        q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))[None, :]

    if not keep_ones:
        return haar(d)
    ones = torch.full((d, 1), 1 / math.sqrt(d), dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.cat([ones, torch.randn(d, d - 1, generator=generator, dtype=torch.float64)], dim=1))
    u = basis[:, 1:]  # orthonormal complement of the ones vector
    return ones @ ones.t() + u @ haar(d - 1) @ u.t()


def rotate_hidden(tensors: dict, roles: WeightRoles, *, generator: "torch.Generator") -> None:
    """Fold the norm gains, then rotate the hidden space by a random orthogonal matrix (HuRef's blind spot)."""
    why = rotation_blockers(roles)
    if why:
        raise HubguardError(f"No hidden rotation preserves a '{roles.arch.family}' model's outputs: {'; '.join(why)}.")
    _fold_gains(tensors, roles)
    keep_ones = roles.arch.spec.norm.type == "layer"
    _map_hidden(tensors, roles, random_orthogonal(roles.arch.hidden_size, generator, keep_ones=keep_ones), norms=False)


def rescale_norms(tensors: dict, roles: WeightRoles, *, generator: "torch.Generator") -> None:
    """Every foldable norm: γ -> γ / s (and β -> β / s), the maps reading it W -> W·diag(s), s per dimension;
    query/key-norm gains: γq -> γq·t, γk -> γk / t, t per dimension, tied on each rotary plane."""
    offset = roles.arch.spec.norm.offset
    for g in roles.norms:
        if g.residual or not g.readers:  # a tied head's final norm has no map of its own to absorb s
            continue
        w = tensors[g.gain]
        s = log_uniform(w.shape[0], generator)
        tensors[g.gain] = ((w.double() + offset) / s - offset).to(w.dtype)
        if g.bias is not None:
            tensors[g.bias] = (tensors[g.bias].double() / s).to(tensors[g.bias].dtype)
        for name, axis in g.readers:
            t = tensors[name]
            tensors[name] = along(t.double(), axis, lambda x, s=s: x * s).to(t.dtype)
    rescale_qk_norms(tensors, roles, generator=generator)


def plane_partner(rotary_dim: int, rotary: str | None, dims: int) -> list[int]:
    """For each per-head dimension, the dimension sharing its rotary plane (itself outside the rotary part)."""
    partner = list(range(dims))
    half = rotary_dim // 2
    for i in range(half):
        a, b = (i, i + half) if rotary == "half" else (2 * i, 2 * i + 1)
        partner[a], partner[b] = b, a
    return partner


def _tied_scales(rotary_dim: int, rotary: str | None, dims: int, generator: "torch.Generator") -> "torch.Tensor":
    s = log_uniform(dims, generator)
    for i, j in enumerate(plane_partner(rotary_dim, rotary, dims)):
        s[j] = s[i] if i < j else s[j]
    return s


def head_gains(tensors: dict, names: tuple[str, ...], *, rows: int, dims: int) -> "torch.Tensor":
    """Per-head norm gains as [rows, dims] (one shared vector gives one row): stored as one vector, a [rows,
    dims] matrix, a full-width [rows * dims] vector, or one vector per head."""
    import torch

    if len(names) > 1:
        return torch.stack([tensors[n].reshape(-1) for n in names]).double()
    w = tensors[names[0]].double()
    return w.reshape(1, dims) if w.numel() == dims else w.reshape(rows, dims)


def set_head_gains(tensors: dict, names: tuple[str, ...], gains: "torch.Tensor") -> None:
    """Store [rows, dims] gains back in the checkpoint's own shapes (see `head_gains`)."""
    if len(names) > 1:
        for h, n in enumerate(names):
            tensors[n] = gains[h].reshape(tensors[n].shape).to(tensors[n].dtype)
    else:
        tensors[names[0]] = gains.reshape(tensors[names[0]].shape).to(tensors[names[0]].dtype)


def _biases(tensors: dict, names: tuple[str, ...]) -> tuple[str, ...]:
    out = tuple(n.removesuffix("weight") + "bias" for n in names if n.endswith("weight"))
    return out if out and all(b in tensors for b in out) else ()


def rescale_qk_norms(tensors: dict, roles: WeightRoles, *, generator: "torch.Generator") -> None:
    import torch

    offset = roles.arch.spec.norm.offset
    for layer in roles.layers:
        a = layer.attention
        if not a.q_norm:
            continue
        H, KV, hd = a.q.index.shape[0], a.kv_heads, a.qk_dims
        q_gain = head_gains(tensors, a.q_norm, rows=H, dims=hd)
        kv_rows = 1 if q_gain.shape[0] == 1 else KV
        t = torch.stack([_tied_scales(a.rotary_dim, a.rotary, hd, generator) for _ in range(kv_rows)])  # [kv, hd]
        t_q = t if kv_rows == 1 else t.repeat_interleave(H // KV, dim=0)
        for names, scale, off in ((a.q_norm, t_q, offset), (_biases(tensors, a.q_norm), t_q, 0.0),
                                  (a.k_norm, 1 / t, offset), (_biases(tensors, a.k_norm), 1 / t, 0.0)):
            if names:
                rows = H if names in (a.q_norm, _biases(tensors, a.q_norm)) else KV
                set_head_gains(tensors, names, (head_gains(tensors, names, rows=rows, dims=hd) + off) * scale - off)
