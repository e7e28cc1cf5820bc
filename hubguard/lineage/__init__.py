"""Lineage: token alignment, invariant terms, scores, calibration, verdicts and layer matching."""

from hubguard.lineage.api import compare, fingerprint
from hubguard.lineage.compare import Comparison, LayerMatch, compare_fingerprints
from hubguard.lineage.fingerprint import Fingerprint, compute_fingerprint, load_fingerprint, save_fingerprint

__all__ = [
    "Comparison",
    "Fingerprint",
    "LayerMatch",
    "compare",
    "compare_fingerprints",
    "compute_fingerprint",
    "fingerprint",
    "load_fingerprint",
    "save_fingerprint",
]
