"""One layer read out over a set of token rows: its whole-layer terms, per-head sketches, per-expert sketches.

The fingerprint (over the model's own token rows) and the cross-embedding reading (over a reference's token
rows) both go through `read_layer`, so the two readings of a layer are computed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubguard.errors import FingerprintError

if TYPE_CHECKING:
    import torch

    from hubguard.weights.canonical import CanonicalLayer


MAX_UNITS = 1024  # heads or experts per layer; real models have at most a few hundred (matching is cubic in them)


@dataclass(frozen=True)
class LayerReadout:
    """whole: term -> [n, n] standardised (FFN terms only for a dense FFN); heads: term -> [H, C, r, r];
    experts: FFN term -> [E, C, r, r] (a dense FFN is one expert); shared: per expert, whether it is shared."""

    whole: dict[str, "torch.Tensor"]
    heads: dict[str, "torch.Tensor"]
    experts: dict[str, "torch.Tensor"]
    shared: tuple[bool, ...]


def token_grid(*, token_set: str, positions: "torch.Tensor") -> "torch.Tensor":
    """[C, 2, n, r]: the unit-sketch projections at the token-set positions of a model's n tokens."""
    from hubguard.lineage.unit_terms import unit_projections

    return unit_projections(token_set)[:, :, positions]


def read_layer(layer: "CanonicalLayer", *, x: "torch.Tensor", grid: "torch.Tensor") -> LayerReadout:
    """Every term of one canonical layer over token rows x [n, d] (grid: `token_grid` of those n tokens)."""
    import torch

    from hubguard.lineage.terms import ffn_terms, head_factors, layer_terms, standardise
    from hubguard.lineage.unit_terms import head_sketches, matrix_sketches

    for what, count in (("attention heads", layer.q.shape[0]), ("FFN experts", len(layer.experts))):
        if count > MAX_UNITS:
            raise FingerprintError(f"Layer {layer.index} has {count} {what}; hubguard matches at most {MAX_UNITS} per "
                                   "layer. Check config.json: no released model has that many.")
    factors = head_factors(layer, x)  # the head projections, shared by the whole-layer terms and the head sketches
    whole = {t: standardise(m) for t, m in layer_terms(layer=layer, x=x, factors=factors).items()}
    heads = head_sketches(factors, grid=grid)
    experts: dict[str, torch.Tensor] = {}
    if layer.dense is not None:
        experts = {t: matrix_sketches(m[None], grid=grid) for t, m in whole.items() if t.startswith("ffn")}
    elif layer.experts:
        per_term: dict[str, list[torch.Tensor]] = {}
        for expert in layer.experts:
            for t, m in ffn_terms(expert=expert, x=x, ffn_type=layer.ffn_type).items():
                per_term.setdefault(t, []).append(standardise(m))
        experts = {t: matrix_sketches(torch.stack(ms), grid=grid) for t, ms in per_term.items()}
    shared = tuple(bool(e.shared) for e in layer.experts) if experts else ()
    return LayerReadout(whole=whole, heads=heads, experts=experts, shared=shared)
