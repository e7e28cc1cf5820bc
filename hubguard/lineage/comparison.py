"""Scores, layer matching and verdicts between two fingerprints.

Every layer pair (i of A, j of B) gets a score on HuRef's ICS scale (100 × cosine of invariant terms) from
`hubguard.lineage.layer_pairs`: attention from its heads matched one to one, the FFN from its whole terms or
its experts matched to experts. Every layer of B is matched to its best layer of A (several B layers may
match one A layer: duplicated or re-ordered layers line up; dropped layers simply find no partner), giving the
per-layer provenance map, with the head and expert pairs of each matched layer. The overall score is the mean
of the best half of B's matched layers, so a model built half from A (a layer-stack merge) still scores high
against A while a single lucky layer does not. Matches are chosen on `pick` values and reported on `score`
values (independent sketch copies, see `hubguard.lineage.matching`). `z` is measured against the calibrated
null.
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
    from hubguard.lineage.layer_pairs import PairEvidence
    from hubguard.lineage.matching import UnitMatch


@dataclass(frozen=True)
class LayerMatch:
    layer: int  # layer index in B (the candidate)
    match: int  # best-matching layer index in A (the reference)
    score: float
    z: float
    terms: dict[str, float]  # part -> score: "heads", the whole FFN terms, or "experts"
    heads: tuple[tuple[int, int, float], ...] = ()  # (B head, A head, score) of every matched head pair
    experts: tuple[tuple[int, int, float], ...] = ()  # (B expert, A expert, score); empty between dense FFNs
    reading: str = "own"  # "own": B's own embedding; "cross": B's layer read through A's token rows


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
        out["layers"] = [asdict(m) | {"heads": [list(h) for h in m.heads], "experts": [list(e) for e in m.experts]}
                         for m in self.layers]
        out["notes"] = list(self.notes)
        return out


def shared_tokens(*, a: Fingerprint, b: Fingerprint) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Positions (in a, in b) of the tokens both fingerprints hold; refuses other method versions and too few
    shared tokens."""
    from hubguard.lineage.similarity import shared_token_index

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
    return ia, ib


def _unit_pairs(match: "UnitMatch | None", i: int, j: int) -> tuple[tuple[int, int, float], ...]:
    if match is None:
        return ()
    pairs, scores = match.pairs[i, j], match.pair_scores[i, j]
    return tuple((int(p[0]), int(p[1]), round(float(s), 2)) for p, s in zip(pairs, scores) if bool(s == s))


def _layer_match(*, a: Fingerprint, b: Fingerprint, ev: "PairEvidence", i: int, j: int, reading: str,
                 cal: "Calibration") -> LayerMatch:
    s = float(ev.score[i, j])
    return LayerMatch(layer=b.layers[j], match=a.layers[i], score=round(s, 3), z=round(cal.layer.z(s), 3),
                      terms={t: round(float(m[i, j]), 3) for t, m in ev.parts.items()},
                      heads=_unit_pairs(ev.heads, i, j), experts=_unit_pairs(ev.experts, i, j),
                      reading=reading)


def compare_fingerprints(
    *,
    a: Fingerprint,
    b: Fingerprint,
    calibration: "Calibration | None" = None,
    cross: "Fingerprint | None" = None,
) -> Comparison:
    """Compare reference A with candidate B.

    cross: optional readout of B's layers through A's token rows (`hubguard.lineage.cross.CrossTerms`); each
    layer pair takes the reading with the better pick value. Callers go through `hubguard.lineage.verify`,
    which supplies it whenever the candidate's weights are at hand.
    """
    import torch

    from hubguard.lineage.calibration import load_calibration
    from hubguard.lineage.layer_pairs import pair_evidence

    cal = calibration or load_calibration()
    ia, ib = shared_tokens(a=a, b=b)
    own = pair_evidence(a=a, b=b, ia=ia, ib=ib)
    readings = [("own", own)]
    if cross is not None and cross.layers == b.layers:
        idx = torch.arange(len(a.tokens))
        readings.append(("cross", pair_evidence(a=a, b=cross, ia=idx, ib=idx)))
    picks = torch.stack([ev.pick for _, ev in readings])  # [R, La, Lb]
    best_pick, which = picks.max(dim=0)
    best_pick_per_b, best_i = best_pick.max(dim=0)  # per B layer: its best A layer, on pick values
    matches = []
    for j in range(len(b.layers)):
        i = int(best_i[j])
        reading, ev = readings[int(which[i, j])]
        matches.append(_layer_match(a=a, b=b if reading == "own" else cross, ev=ev, i=i, j=j, reading=reading,
                                    cal=cal))
    k = max(1, math.ceil(len(matches) / 2))
    top = sorted(range(len(matches)), key=lambda j: -float(best_pick_per_b[j]))[:k]
    score = sum(matches[j].score for j in top) / k
    parts = sorted({t for j in top for t in matches[j].terms})
    terms = {t: round(sum(matches[j].terms.get(t, 0.0) for j in top) / k, 3) for t in parts}
    z = cal.overall.z(score)
    cross_only = sum(m.reading == "cross" and m.z >= cal.derivative_z > cal.layer.z(float(own.score[int(best_i[j]), j]))
                     for j, m in enumerate(matches))
    return Comparison(
        score=round(score, 3), z=round(z, 3), verdict=cal.verdict(z), terms=terms, layers=tuple(matches),
        a=a.summary(), b=b.summary(), common_tokens=len(ia), false_positive_rate=cal.overall.false_positive_rate(score),
        matched_layers=sum(m.z >= cal.derivative_z for m in matches), notes=tuple(_notes(a=a, b=b, n_shared=len(ia),
                                                                                       cross_only=cross_only)),
    )


def _notes(*, a: Fingerprint, b: Fingerprint, n_shared: int, cross_only: int) -> list[str]:
    notes = []
    if a.model.get("tokenizer_sha256") and a.model.get("tokenizer_sha256") != b.model.get("tokenizer_sha256"):
        notes.append(f"tokenizers differ; compared on {n_shared} shared tokens")
    if cross_only:
        notes.append(f"{cross_only} layer(s) match only when read through the reference's embedding (copied under another embedding)")
    if a.model.get("family") != b.model.get("family"):
        notes.append(f"families differ ({a.model.get('family')} vs {b.model.get('family')})")
    ha, hb = max(a.head_counts or (0,)), max(b.head_counts or (0,))
    if ha != hb:
        notes.append(f"head counts differ ({ha} vs {hb} per layer); heads matched one to one")
    ea, eb = max(a.expert_counts or (0,)), max(b.expert_counts or (0,))
    if ea != eb and min(ea, eb) > 0:
        notes.append(f"expert counts differ ({ea} vs {eb} per layer); each candidate expert matched to its best reference expert")
    return notes
