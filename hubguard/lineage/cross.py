"""Cross-embedding scores: a candidate's layers read through the reference's token rows.

The terms of a fingerprint tie each layer to the model's own embedding. A layer copied into a model with
another embedding — a frankenmerge stacking layers of two bases, or a body kept under a re-trained
embedding — no longer meets its original token rows, so its own-embedding terms look unrelated. With the
reference's token rows (`Fingerprint.probe`) and the candidate's weights, the candidate's layers can be
read through the reference's rows: X_ref W_cand X_refᵀ (whole-layer terms, head and expert sketches alike). A
layer copied from the reference (canonicalised, so norm folding and rescaling do not matter) then reproduces
the reference's terms.

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
    from hubguard.lineage.readout import LayerReadout
    from hubguard.weights.canonical import CanonicalLayer


class CrossTerms:
    """Accumulates a candidate's layers read through `reference`'s token rows, one canonical layer at a time
    (so a pass over the candidate's layers can feed several references and no layer is read twice)."""

    def __init__(self, *, reference: "Fingerprint") -> None:
        self.reference = reference
        self.usable = reference.probe is not None
        self._readouts: list[LayerReadout] = []
        self._layers: list[int] = []
        self._grid: torch.Tensor | None = None

    def add(self, layer: "CanonicalLayer") -> None:
        import torch

        from hubguard.lineage.readout import read_layer, token_grid
        from hubguard.lineage.tokens import token_set_index

        probe = self.reference.probe
        if not self.usable or probe is None:
            return
        if layer.v.shape[0] == 0 or layer.q.shape[-1] != probe.shape[1]:
            self.usable = False  # head slices (tight budgets) or another hidden size: not applicable
            return
        if self._grid is None:
            ref = self.reference
            self._grid = token_grid(token_set=ref.token_set,
                                    positions=torch.tensor(token_set_index(ref.tokens, token_set=ref.token_set)))
        self._readouts.append(read_layer(layer, x=probe.float(), grid=self._grid))
        self._layers.append(layer.index)

    def reading(self) -> "Fingerprint | None":
        """The candidate's layers as read through the reference's token rows — a fingerprint over the
        reference's tokens, compared with the reference by `compare_fingerprints(cross=...)`; None when not
        applicable."""
        from dataclasses import replace

        from hubguard.lineage.fingerprints import stack_readouts

        if not self.usable or not self._readouts:
            return None
        ref = self.reference
        return replace(ref, layers=tuple(self._layers), probe=None, stats={},
                       model={"name": f"{ref.name} (cross reading)"}, **stack_readouts(self._readouts))
