"""The two calls most users need: `fingerprint(source)` and `compare(a, b)`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hubguard.lineage.fingerprints import Fingerprint, compute_fingerprint, is_fingerprint_file, load_fingerprint

if TYPE_CHECKING:
    from hubguard.lineage.calibration import Calibration
    from hubguard.lineage.comparison import Comparison



def fingerprint(source: "str | os.PathLike[str]", **kwargs: object) -> Fingerprint:
    """Fingerprint a model folder, `.safetensors` file or `hf://ORG/NAME[@REV]` (see `compute_fingerprint`)."""
    return compute_fingerprint(source, **kwargs)  # type: ignore[arg-type]


def is_weight_source(item: "Fingerprint | str | os.PathLike[str]") -> bool:
    """True for a model folder, weights file or hf:// repo (not a Fingerprint or a saved fingerprint)."""
    return not isinstance(item, Fingerprint) and not is_fingerprint_file(item)


def as_fingerprint(
    item: "Fingerprint | str | os.PathLike[str]", *, allow_pickle: bool = False, keep_probe: bool = False
) -> Fingerprint:
    """A Fingerprint as is, a saved fingerprint file, or a weight source to fingerprint."""
    if isinstance(item, Fingerprint):
        return item
    if is_fingerprint_file(item):
        return load_fingerprint(item)
    return compute_fingerprint(item, allow_pickle=allow_pickle, keep_probe=keep_probe)


def compare(
    a: "Fingerprint | str | os.PathLike[str]",
    b: "Fingerprint | str | os.PathLike[str]",
    *,
    calibration: "Calibration | None" = None,
    allow_pickle: bool = False,
) -> "Comparison":
    """Compare reference `a` with candidate `b` (sources, saved fingerprints, or Fingerprint objects).

    See `compare_with_fingerprints`, which also returns the two fingerprints.
    """
    return compare_with_fingerprints(a, b, calibration=calibration, allow_pickle=allow_pickle)[2]


def compare_with_fingerprints(
    a: "Fingerprint | str | os.PathLike[str]",
    b: "Fingerprint | str | os.PathLike[str]",
    *,
    calibration: "Calibration | None" = None,
    allow_pickle: bool = False,
) -> tuple[Fingerprint, Fingerprint, "Comparison"]:
    """Compare reference `a` with candidate `b` (sources, saved fingerprints, or Fingerprint objects).

    When `b` is a weight source and `a`'s fingerprint has its token rows (a source, or a fingerprint made with
    keep_probe=True), `b`'s layers are also read through `a`'s embedding (`hubguard.lineage.cross`), which
    finds layers copied under another embedding.
    """
    from hubguard.weights.source import open_source
    from hubguard.lineage.comparison import compare_fingerprints
    from hubguard.lineage.cross import CrossTerms
    from hubguard.lineage.fingerprints import fingerprint_checkpoint

    fa = as_fingerprint(a, allow_pickle=allow_pickle, keep_probe=True)
    cross = None
    if is_weight_source(b):
        acc = CrossTerms(reference=fa)  # b's layers read through a's token rows, in the same pass
        fb = fingerprint_checkpoint(checkpoint=open_source(b, allow_pickle=allow_pickle), name=str(b), on_layer=acc.add)
        cross = acc.scores()
    else:
        fb = as_fingerprint(b)
    return fa, fb, compare_fingerprints(a=fa, b=fb, calibration=calibration, cross=cross)
