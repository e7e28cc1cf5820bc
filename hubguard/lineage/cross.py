"""Cross-embedding scores: a candidate's layers read through the reference's token rows.

The terms of a fingerprint tie each layer to the model's own embedding. A layer copied into a model with
another embedding — a frankenmerge stacking layers of two bases, or a body kept under a re-trained
embedding — no longer meets its original token rows, so its own-embedding terms look unrelated. With the
reference's token rows (`Fingerprint.probe`) and the candidate's weights, the candidate's layers can be
read through the reference's rows: X_ref W_cand X_refᵀ. A layer copied from the reference (canonicalised, so
norm folding and rescaling do not matter) then reproduces the reference's terms.

This needs the candidate's weights (not just its fingerprint) and a reference fingerprint made with
`keep_probe=True`; the verification pipeline (`hubguard.lineage.verify`) uses it whenever both are at hand.
It is not invariant to a rotation of the candidate's hidden space applied after the copy — no embedding-free
signal is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.weights.canonical import CanonicalLayer


class CrossTerms:
    """Accumulates a candidate's layers read through `reference`'s token rows, one canonical layer at a time
    (so a pass over the candidate's layers can feed several references and no layer is read twice)."""

    def __init__(self, *, reference: "Fingerprint") -> None:
        self.reference = reference
        self.usable = reference.probe is not None
        self._terms: dict[str, list[torch.Tensor]] = {}

    def add(self, layer: "CanonicalLayer") -> None:
        from hubguard.lineage.terms import layer_terms, standardise

        probe = self.reference.probe
        if not self.usable or probe is None:
            return
        if layer.v.shape[0] == 0 or layer.q.shape[-1] != probe.shape[1]:
            self.usable = False  # head slices (tight budgets) or another hidden size: not applicable
            return
        for t, m in layer_terms(layer=layer, x=probe.float()).items():
            self._terms.setdefault(t, []).append(standardise(m))

    def scores(self) -> "dict[str, torch.Tensor] | None":
        """Per shared term, [len(reference.layers), layers added] scores (0-100); None when not applicable."""
        import torch

        from hubguard.lineage.similarity import layer_scores

        if not self.usable or not self._terms:
            return None
        idx = torch.arange(len(self.reference.tokens))
        out = {t: layer_scores(self.reference.terms[t], torch.stack(self._terms[t]), ia=idx, ib=idx)
               for t in sorted(set(self._terms) & set(self.reference.terms))}
        return out or None
