"""The calls most users need: `fingerprint(source)` and `compare(a, b)`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hubguard.lineage.fingerprint_files import is_fingerprint_file, load_fingerprint
from hubguard.lineage.fingerprints import Fingerprint, compute_fingerprint

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
    item: "Fingerprint | str | os.PathLike[str]", *, allow_pickle: bool = False, keep_probe: bool = False,
    family: str | None = None, base: "str | os.PathLike[str] | None" = None,
) -> Fingerprint:
    """A Fingerprint as is, a saved fingerprint file, or a weight source to fingerprint."""
    if isinstance(item, Fingerprint):
        return item
    if is_fingerprint_file(item):
        return load_fingerprint(item)
    return compute_fingerprint(item, allow_pickle=allow_pickle, keep_probe=keep_probe, family=family, base=base)


def compare(
    a: "Fingerprint | str | os.PathLike[str]",
    b: "Fingerprint | str | os.PathLike[str]",
    *,
    calibration: "Calibration | None" = None,
    allow_pickle: bool = False,
    family: str | None = None,
    base: "str | os.PathLike[str] | None" = None,
) -> "Comparison":
    """Compare reference `a` with candidate `b` (sources, saved fingerprints, or Fingerprint objects).

    See `compare_with_fingerprints`, which also returns the two fingerprints.
    """
    return compare_with_fingerprints(a, b, calibration=calibration, allow_pickle=allow_pickle, family=family,
                                     base=base)[2]


def compare_with_fingerprints(
    a: "Fingerprint | str | os.PathLike[str]",
    b: "Fingerprint | str | os.PathLike[str]",
    *,
    calibration: "Calibration | None" = None,
    allow_pickle: bool = False,
    family: str | None = None,
    base: "str | os.PathLike[str] | None" = None,
) -> tuple[Fingerprint, Fingerprint, "Comparison"]:
    """Compare reference `a` with candidate `b` through the verification pipeline (`hubguard.lineage.verify`).

    When `b` is a weight source, its layers are also read through `a`'s embedding in the same pass (for `a` a
    source, or a fingerprint made with keep_probe=True), which finds layers copied under another embedding.
    `family` forces the architecture map of weight sources; `base` is where the base of an adapter (either side)
    is, instead of the one its adapter_config.json names.
    """
    from hubguard.lineage.candidate import open_candidate
    from hubguard.lineage.verify import verify

    reference = as_fingerprint(a, allow_pickle=allow_pickle, keep_probe=True, family=family, base=base)
    candidate = open_candidate(b, references=[reference], allow_pickle=allow_pickle, family=family, base=base)
    return reference, candidate.fingerprint, verify(reference=reference, candidate=candidate, calibration=calibration)
