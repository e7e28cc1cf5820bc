"""Lineage: token alignment, invariant terms, scores, calibration, verdicts and layer matching."""

from hubguard.lineage import api as _api
from hubguard.lineage.compare import Comparison, LayerMatch, compare_fingerprints
from hubguard.lineage.fingerprint import Fingerprint, compute_fingerprint, load_fingerprint, save_fingerprint

# Importing the submodule `hubguard.lineage.compare` binds the package attribute `compare` to that module;
# the public name is the function.
compare = _api.compare
fingerprint = _api.fingerprint

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
