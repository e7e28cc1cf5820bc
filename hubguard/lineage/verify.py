"""The one verification pipeline: a candidate against references, with the calibrated verdict per layer.

`verify(reference=..., candidate=...)` is what `hubguard compare`, the pre-upload check, the webhook bot,
`Registry.search` and the Space all call, so they cannot disagree on the same pair: each reference's
comparison uses the candidate's own-embedding terms and, whenever the candidate's weights are at hand and the
reference kept its token rows, the candidate's layers read through the reference's embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubguard.lineage.candidate import Candidate
from hubguard.lineage.comparison import Comparison, compare_fingerprints

if TYPE_CHECKING:
    from hubguard.lineage.calibration import Calibration
    from hubguard.lineage.fingerprints import Fingerprint


def verify_many(
    *, references: Sequence["Fingerprint"], candidate: Candidate, calibration: "Calibration | None" = None
) -> list[Comparison]:
    """The comparison of `candidate` with each reference (in order); one pass over its layers serves them all."""
    crosses = candidate.cross_readings(references)
    return [compare_fingerprints(a=ref, b=candidate.fingerprint, calibration=calibration, cross=cross)
            for ref, cross in zip(references, crosses)]


def verify(*, reference: "Fingerprint", candidate: Candidate, calibration: "Calibration | None" = None) -> Comparison:
    """Does `candidate` derive from `reference`? Score, z, verdict, per-layer map."""
    return verify_many(references=[reference], candidate=candidate, calibration=calibration)[0]


@dataclass(frozen=True)
class LayerSource:
    layer: int  # candidate layer
    source: str | None  # reference name whose layer matches best (None: no reference matches)
    match: int | None  # that reference's layer index
    score: float
    z: float
    heads: tuple[tuple[int, int, float], ...] = ()  # (candidate head, reference head, score) in the matched layer
    experts: tuple[tuple[int, int, float], ...] = ()  # (candidate expert, reference expert, score), MoE layers


def layer_provenance(
    *, candidate: Candidate, references: Mapping[str, "Fingerprint"], calibration: "Calibration | None" = None,
    comparisons: Sequence[Comparison] | None = None,
) -> list[LayerSource]:
    """For each candidate layer, which reference (and which of its layers, heads and experts) it matches best.

    A merge of two bases shows both; a layer no reference explains (z below the derivative threshold) gets
    source None. `comparisons`: the `verify_many` results for `references` (in order), when already made.
    """
    from hubguard.lineage.calibration import load_calibration

    cal = calibration or load_calibration()
    names = list(references)
    results = comparisons if comparisons is not None else verify_many(
        references=[references[n] for n in names], candidate=candidate, calibration=cal)
    layers = candidate.fingerprint.layers
    best = [LayerSource(layer=i, source=None, match=None, score=float("-inf"), z=float("-inf")) for i in layers]
    for name, result in zip(names, results):
        for j, m in enumerate(result.layers):
            if m.score > best[j].score:
                best[j] = LayerSource(layer=m.layer, source=name, match=m.match, score=m.score, z=m.z, heads=m.heads,
                                      experts=m.experts)
    return [b if b.z >= cal.derivative_z else LayerSource(layer=b.layer, source=None, match=None, score=b.score, z=b.z)
            for b in best]
