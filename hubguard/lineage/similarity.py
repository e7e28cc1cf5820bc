"""The one similarity of lineage: 100 × the cosine of two z-scored [n, n] terms over shared tokens, diagonal out.

HuRef's ICS scale, computed on invariant terms. Every score in hubguard — own-embedding comparisons,
cross-embedding readings, per-layer matches — is this function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def shared_token_index(a: "tuple[str, ...]", b: "tuple[str, ...]") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Positions (in a, in b) of the tokens both hold, in a's order."""
    import torch

    pos_b = {t: i for i, t in enumerate(b)}
    pairs = [(i, pos_b[t]) for i, t in enumerate(a) if t in pos_b]
    return torch.tensor([i for i, _ in pairs], dtype=torch.long), torch.tensor([j for _, j in pairs], dtype=torch.long)


def flatten_offdiag(m: "torch.Tensor", idx: "torch.Tensor") -> "torch.Tensor":
    """[L, n, n] restricted to tokens idx -> [L, k*(k-1)] centred, unit-norm rows (the diagonal left out)."""
    import torch

    sub = m[:, idx][:, :, idx].float()
    k = sub.shape[-1]
    off = ~torch.eye(k, dtype=torch.bool)
    flat = sub[:, off]
    flat = flat - flat.mean(dim=1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)


def layer_scores(a: "torch.Tensor", b: "torch.Tensor", *, ia: "torch.Tensor", ib: "torch.Tensor") -> "torch.Tensor":
    """[La, Lb] scores (0-100 scale, cosine × 100) between every layer of term stack a [La, n, n] and b [Lb, m, m]."""
    return 100.0 * (flatten_offdiag(a, ia) @ flatten_offdiag(b, ib).t())
