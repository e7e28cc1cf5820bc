"""Search sketches: one short unit vector per fingerprint whose dot products approximate term similarity.

For each attention term (present in every family), the z-scored [n, n] matrices of all layers are summed
(so layer order, pruning and duplication change little), placed on the full token-set grid (tokens a
vocabulary lacks stay zero), and projected as Uᵀ M V with fixed Gaussian U, V [N, r] (seeded, versioned).
E⟨UᵀAV, UᵀBV⟩ ∝ ⟨A, B⟩, so the cosine of two sketches estimates the cosine of the summed terms: high for a
derivative, near zero for an independent model. Registry search ranks by it, then verifies the top
candidates with the full `compare`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from hubguard.lineage.tokens import load_token_set, token_set_index

if TYPE_CHECKING:
    import numpy as np
    import torch

    from hubguard.lineage.fingerprints import Fingerprint

SKETCH_TERMS = ("attn_qk", "attn_vo")
SKETCH_RANK = 16  # per term: r*r = 256 values; two terms -> 512
SKETCH_DIM = len(SKETCH_TERMS) * SKETCH_RANK * SKETCH_RANK
SKETCH_VERSION = 1
_SEED = 20240601


@lru_cache(maxsize=4)
def _projections(token_set: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    n = len(load_token_set(token_set))
    g = torch.Generator().manual_seed(_SEED)
    return torch.randn(n, SKETCH_RANK, generator=g), torch.randn(n, SKETCH_RANK, generator=g)


def sketch(fp: "Fingerprint") -> "np.ndarray":
    """The fingerprint's search sketch: float32 [SKETCH_DIM], unit norm."""
    import torch

    idx = torch.tensor(token_set_index(fp.tokens, token_set=fp.token_set))
    u, v = _projections(fp.token_set)
    parts = []
    for t in SKETCH_TERMS:
        if t not in fp.terms:  # head-slice fingerprints of big models hold attn_qk only: that part stays zero
            parts.append(torch.zeros(SKETCH_RANK * SKETCH_RANK))
            continue
        m = fp.terms[t].float().sum(dim=0)  # [n, n] summed over layers
        m = m - torch.diag(torch.diagonal(m))  # the diagonal is excluded from scores too
        parts.append((u[idx].t() @ m @ v[idx]).flatten())  # [r, r]
    vec = torch.cat(parts)
    return (vec / vec.norm().clamp_min(1e-12)).numpy().astype("float32")
