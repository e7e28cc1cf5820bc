"""The two calls most users need: `fingerprint(source)` and `compare(a, b)`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hubguard.lineage.fingerprint import Fingerprint, compute_fingerprint, is_fingerprint_file, load_fingerprint

if TYPE_CHECKING:
    from hubguard.lineage.calibration import Calibration
    from hubguard.lineage.compare import Comparison



def fingerprint(source: "str | os.PathLike[str]", **kwargs: object) -> Fingerprint:
    """Fingerprint a model folder, `.safetensors` file or `hf://ORG/NAME[@REV]` (see `compute_fingerprint`)."""
    return compute_fingerprint(source, **kwargs)  # type: ignore[arg-type]


def as_fingerprint(item: "Fingerprint | str | os.PathLike[str]", *, allow_pickle: bool = False) -> Fingerprint:
    """A Fingerprint as is, a saved fingerprint file, or a weight source to fingerprint."""
    if isinstance(item, Fingerprint):
        return item
    if is_fingerprint_file(item):
        return load_fingerprint(item)
    return compute_fingerprint(item, allow_pickle=allow_pickle)


def compare(
    a: "Fingerprint | str | os.PathLike[str]",
    b: "Fingerprint | str | os.PathLike[str]",
    *,
    calibration: "Calibration | None" = None,
    allow_pickle: bool = False,
) -> "Comparison":
    """Compare reference `a` with candidate `b` (sources, saved fingerprints, or Fingerprint objects)."""
    from hubguard.lineage.compare import compare_fingerprints

    return compare_fingerprints(
        a=as_fingerprint(a, allow_pickle=allow_pickle), b=as_fingerprint(b, allow_pickle=allow_pickle), calibration=calibration
    )
