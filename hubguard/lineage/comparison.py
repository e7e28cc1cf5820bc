"""Scores, layer matching and verdicts between two fingerprints.

Per term and layer pair (i of A, j of B), the score is 100 × the cosine of the two z-scored [n, n] term
matrices over the tokens both models hold, diagonal excluded — HuRef's ICS scale, computed on invariant
terms. A layer pair's score is the mean over the terms both fingerprints have. Every layer of B is matched
to its best layer of A (several B layers may match one A layer: duplicated or re-ordered layers line up;
dropped layers simply find no partner), giving the per-layer provenance map. The overall score is the mean
of the best half of B's matched layers, so a model built half from A (a layer-stack merge) still scores
high against A while a single lucky layer does not. `z` is measured against the calibrated null.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hubguard.errors import IncompatibleFingerprintError
from hubguard.lineage.fingerprints import Fingerprint
from hubguard.lineage.tokens import MIN_TOKENS

if TYPE_CHECKING:
    import torch

    from hubguard.lineage.calibration import Calibration


@dataclass(frozen=True)
class LayerMatch:
    layer: int  # layer index in B (the candidate)
    match: int  # best-matching layer index in A (the reference)
    score: float
    z: float
    terms: dict[str, float]


@dataclass(frozen=True)
class Comparison:
    score: float
    z: float
    verdict: str
    terms: dict[str, float]
    layers: tuple[LayerMatch, ...]
    a: dict[str, Any]
    b: dict[str, Any]
    common_tokens: int
    false_positive_rate: float | None = None
    matched_layers: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = [asdict(m) for m in self.layers]
        out["notes"] = list(self.notes)
        return out


def term_scores(*, a: Fingerprint, b: Fingerprint) -> tuple[dict[str, "torch.Tensor"], int]:
    """Per shared term, the [La, Lb] matrix of 0–100 scores, and the number of shared tokens."""
    from hubguard.lineage.similarity import layer_scores, shared_token_index

    if a.method != b.method or a.version != b.version:
        raise IncompatibleFingerprintError(
            f"Cannot compare a {a.method} v{a.version} fingerprint with a {b.method} v{b.version} one. "
            "Re-fingerprint both with the same hubguard version."
        )
    ia, ib = shared_token_index(a.tokens, b.tokens)
    if len(ia) < MIN_TOKENS:
        raise IncompatibleFingerprintError(
            f"'{a.name}' and '{b.name}' share only {len(ia)} tokens of their token sets ({a.token_set}, "
            f"{b.token_set}); at least {MIN_TOKENS} are needed. Their vocabularies are too different to align."
        )
    scores = {t: layer_scores(a.terms[t], b.terms[t], ia=ia, ib=ib) for t in sorted(set(a.terms) & set(b.terms))}
    if not scores:
        raise IncompatibleFingerprintError(f"'{a.name}' and '{b.name}' have no invariant term in common.")
    return scores, len(ia)


def compare_fingerprints(
    *,
    a: Fingerprint,
    b: Fingerprint,
    calibration: "Calibration | None" = None,
    cross: "dict[str, torch.Tensor] | None" = None,
) -> Comparison:
    """Compare reference A with candidate B.

    cross: optional per-term [La, Lb] scores of B's layers read through A's token rows
    (`hubguard.lineage.cross.CrossTerms`); a layer pair takes the better of the two readings. Callers go
    through `hubguard.lineage.verify`, which supplies it whenever the candidate's weights are at hand.
    """
    import torch

    from hubguard.lineage.calibration import load_calibration

    cal = calibration or load_calibration()
    per_term, n_shared = term_scores(a=a, b=b)
    # Attention terms exist in every family; FFN terms only between like FFNs. Average what is shared.
    layer_scores = torch.stack(list(per_term.values())).mean(dim=0)  # [La, Lb]
    via_cross = torch.zeros_like(layer_scores, dtype=torch.bool)
    if cross:
        cross_layers = torch.stack([cross[t] for t in per_term if t in cross]).mean(dim=0)
        if cross_layers.shape == layer_scores.shape:
            via_cross = cross_layers > layer_scores
            layer_scores = torch.maximum(layer_scores, cross_layers)
            per_term = {t: torch.where(via_cross, cross[t], m) if t in cross else m for t, m in per_term.items()}
    best, best_i = layer_scores.max(dim=0)  # per B layer
    matches = []
    for j in range(layer_scores.shape[1]):
        i = int(best_i[j])
        s = float(best[j])
        matches.append(
            LayerMatch(
                layer=b.layers[j],
                match=a.layers[i],
                score=round(s, 3),
                z=round(cal.layer.z(s), 3),
                terms={t: round(float(m[i, j]), 3) for t, m in per_term.items()},
            )
        )
    k = max(1, math.ceil(len(matches) / 2))
    top = sorted(range(len(matches)), key=lambda j: -matches[j].score)[:k]
    score = sum(matches[j].score for j in top) / k
    terms = {t: round(sum(float(m[best_i[j], j]) for j in top) / k, 3) for t, m in per_term.items()}
    z = cal.overall.z(score)
    matched = sum(m.z >= cal.derivative_z for m in matches)
    notes = []
    if a.model.get("tokenizer_sha256") and a.model.get("tokenizer_sha256") != b.model.get("tokenizer_sha256"):
        notes.append(f"tokenizers differ; compared on {n_shared} shared tokens")
    n_cross = sum(bool(via_cross[int(best_i[j]), j]) and matches[j].z >= cal.derivative_z for j in range(len(matches)))
    if n_cross:
        notes.append(f"{n_cross} layer(s) match only when read through the reference's embedding (copied under another embedding)")
    if a.model.get("family") != b.model.get("family"):
        notes.append(f"families differ ({a.model.get('family')} vs {b.model.get('family')}); shared terms: {sorted(per_term)}")
    return Comparison(
        score=round(score, 3),
        z=round(z, 3),
        verdict=cal.verdict(z),
        terms=terms,
        layers=tuple(matches),
        a=a.summary() | {"terms": sorted(a.terms)},
        b=b.summary() | {"terms": sorted(b.terms)},
        common_tokens=n_shared,
        false_positive_rate=cal.overall.false_positive_rate(score),
        matched_layers=matched,
        notes=tuple(notes),
    )
