"""Lineage: token alignment, invariant terms, fingerprints, similarity, calibration, verdicts, and the one
verification pipeline (`hubguard.lineage.verify`) every caller uses."""

from hubguard.lineage.api import compare, fingerprint
from hubguard.lineage.comparison import Comparison, LayerMatch, compare_fingerprints
from hubguard.lineage.fingerprint_files import load_fingerprint, save_fingerprint
from hubguard.lineage.fingerprints import Fingerprint, compute_fingerprint

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
