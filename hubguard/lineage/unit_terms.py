"""Per-head attention terms and per-expert FFN terms, sketched so that many heads of many layers stay small.

A layer's whole-matrix terms sum over its heads (and a dense FFN is one block), so they change when heads
are pruned or a dense FFN is split into experts. The terms of each unit do not:

    head h:    QK_h = X Wq_hᵀ Wk_h Xᵀ,   VO_h = X Wv_hᵀ Wo_hᵀ Xᵀ      (query heads of a GQA group share K / V)
    expert e:  the FFN terms of `hubguard.lineage.terms` over that expert's weights alone

Every one is [n, n] over the token rows X, whatever the model's width, so a model pruned in width (fewer
hidden channels, heads, FFN units) still has terms to compare with its parent's, head against head.

Storing [n, n] per head is too big (32 heads × 32 layers × 2 terms × 288² floats), so each unit term is kept
as sketches S = Pᵀ M Q: fixed orthonormal projections P, Q [N, r] of the token-set grid (seeded, versioned;
tokens a vocabulary lacks drop out). ⟨PᵀAQ, PᵀBQ⟩ estimates ⟨A, B⟩, so sketch cosines estimate term cosines,
with an error of about 1/r. Two independent sketches are kept per term (`UNIT_COPIES`): matching heads and
experts picks pairs on copy 0 and scores them on copy 1, so picking the best of many noisy pairs does not
inflate the score of unrelated models, whatever their head counts (see `hubguard.lineage.matching`).

Each head term is standardised like a layer term before it is sketched — its leading singular components
(the function every model trained on the same data learns) removed, the diagonal left out, the off-diagonal
mean subtracted — all on the term's factors (M_h = A Bᵀ with A, B [n, head_dim]), never forming [n, n].
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from hubguard.lineage.terms import per_head, right_singular_vectors
from hubguard.lineage.tokens import load_token_set

if TYPE_CHECKING:
    import torch

UNIT_RANK = 24  # r: each sketch is [r, r]
UNIT_COPIES = 2  # independent sketches per term: copy 0 picks matches, copy 1 scores them
HEAD_SHARED_RANK = 2  # leading singular components removed from each head term
_SEED = 20261201


@lru_cache(maxsize=4)
def unit_projections(token_set: str) -> "torch.Tensor":
    """[UNIT_COPIES, 2, N, r] float64: per copy, the left and right orthonormal projections of the token grid."""
    import torch

    n = len(load_token_set(token_set))
    g = torch.Generator().manual_seed(_SEED)
    gauss = torch.randn(UNIT_COPIES, 2, n, min(UNIT_RANK, n), generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(gauss)
    return q


def _unit_rms(s: "torch.Tensor") -> "torch.Tensor":
    """Each [r, r] sketch scaled to RMS 1 (only cosines are used; unit scale keeps float8 storage safe)."""
    rms = (s * s).mean(dim=(-2, -1), keepdim=True).sqrt().clamp_min(1e-30)
    return (s / rms).float()


def factor_sketches(a: "torch.Tensor", b: "torch.Tensor", *, grid: "torch.Tensor",
                    shared_rank: int = HEAD_SHARED_RANK) -> "torch.Tensor":
    """Sketches of M_h = a_h b_hᵀ, standardised. a, b: [H, n, c], or one of them [G, n, c], one per KV group
    (`hubguard.lineage.terms.head_factors`); grid: [C, 2, n, r] (the projections at this model's token
    positions). Returns [H, C, r, r] float32."""
    import torch

    heads = max(a.shape[0], b.shape[0])
    qb, rb = (per_head(t, heads) for t in torch.linalg.qr(b.float()))  # [H, n, c'], [H, c', c']; a group's once
    d = per_head(a.float(), heads) @ rb.transpose(-1, -2)  # M_h = d qbᵀ, d [H, n, c']
    vecs = right_singular_vectors(d, what="a head term")  # [H, c', c'], ascending singular values
    lead = vecs[..., max(vecs.shape[-1] - shared_rank, 0) :]  # [H, c', k]: the leading ones
    u = d - (d @ lead) @ lead.transpose(-1, -2)  # the shared function removed: M'_h = u vᵀ, [H, n, c']
    v = qb
    n = qb.shape[1]
    diag = (u * v).sum(dim=-1)  # [H, n]: M'_h[i, i]
    mean = ((u.sum(dim=1) * v.sum(dim=1)).sum(dim=-1) - diag.sum(dim=-1)) / max(n * n - n, 1)  # off-diagonal mean
    out = []
    for left, right in grid.float():  # one copy: [n, r], [n, r]
        full = torch.einsum("nr,hnc->hrc", left, u) @ torch.einsum("ns,hnc->hcs", right, v)  # Pᵀ M' Q
        on_diag = torch.einsum("nr,hn,ns->hrs", left, diag, right)
        ones = torch.outer(left.sum(dim=0), right.sum(dim=0)) - left.t() @ right  # Pᵀ (11ᵀ − I) Q
        out.append(full - on_diag - mean[:, None, None] * ones[None])
    return _unit_rms(torch.stack(out, dim=1))


def matrix_sketches(m: "torch.Tensor", *, grid: "torch.Tensor") -> "torch.Tensor":
    """Sketches of standardised [E, n, n] terms (off-diagonal already z-scored), diagonal left out: [E, C, r, r]."""
    import torch

    m = m.float() * (~torch.eye(m.shape[-1], dtype=torch.bool))
    return _unit_rms(torch.stack([left.t() @ m @ right for left, right in grid.float()], dim=1))


def head_sketches(factors: dict[str, tuple["torch.Tensor", "torch.Tensor"]], *, grid: "torch.Tensor") -> dict[str, "torch.Tensor"]:
    """Per head term: [H, C, r, r] sketches, from its factors (`hubguard.lineage.terms.head_factors`)."""
    return {t: factor_sketches(a, b, grid=grid) for t, (a, b) in factors.items()}
