"""Cross-embedding scores: a candidate's layers read through the reference's token rows.

The terms of a fingerprint tie each layer to the model's own embedding. A layer copied into a model with
another embedding — a frankenmerge stacking layers of two bases, or a body kept under a re-trained
embedding — no longer meets its original token rows, so its own-embedding terms look unrelated. With the
reference's token rows (`Fingerprint.probe`) and the candidate's weights, the candidate's layers can be
read through the reference's rows: X_ref W_cand X_refᵀ. A layer copied from the reference (canonicalised, so
norm folding and rescaling do not matter) then reproduces the reference's terms.

This needs the candidate's weights (not just its fingerprint) and a reference fingerprint made with
`keep_probe=True`; `hubguard compare A B` on two sources and the zoo benchmark use it. It is not invariant to
a rotation of the candidate's hidden space applied after the copy — no embedding-free signal is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from hubguard.weights.canonical import CanonicalLayer
    from hubguard.weights.source import Checkpoint
    from hubguard.lineage.fingerprints import Fingerprint


class CrossTerms:
    """Accumulates a candidate's layers read through `reference`'s token rows, one canonical layer at a time
    (so the fingerprinting pass can feed it and no layer is read twice)."""

    def __init__(self, *, reference: "Fingerprint") -> None:
        self.reference = reference
        self.usable = reference.probe is not None
        self._terms: dict[str, list[torch.Tensor]] = {}

    def add(self, layer: "CanonicalLayer") -> None:
        from hubguard.lineage.terms import layer_terms, standardise

        if not self.usable:
            return
        if layer.v.shape[0] == 0 or layer.q.shape[-1] != self.reference.probe.shape[1]:
            self.usable = False  # head slices (tight budgets) or another hidden size: not applicable
            return
        for t, m in layer_terms(layer=layer, x=self.reference.probe.float()).items():
            self._terms.setdefault(t, []).append(standardise(m))

    def scores(self) -> dict[str, "torch.Tensor"] | None:
        """Per shared term, [len(reference.layers), layers added] scores (0-100); None when not applicable."""
        import torch

        from hubguard.lineage.comparison import _flatten_offdiag

        if not self.usable or not self._terms:
            return None
        idx = torch.arange(len(self.reference.tokens))
        out = {}
        for t in sorted(set(self._terms) & set(self.reference.terms)):
            ref = _flatten_offdiag(self.reference.terms[t], idx)
            cand = _flatten_offdiag(torch.stack(self._terms[t]), idx)
            out[t] = 100.0 * (ref @ cand.t())
        return out or None


def cross_scores(
    *, reference: "Fingerprint", candidate: "Checkpoint", layers: list[int] | None = None, with_ffn: bool = True
) -> dict[str, "torch.Tensor"] | None:
    """Per shared term, [len(reference.layers), len(layers)] scores (0-100) of the candidate's layers read
    through the reference's token rows; None when not applicable (no probe, different hidden size)."""
    from hubguard.weights.binding import bind_architecture
    from hubguard.weights.canonical import LayerReader

    acc = CrossTerms(reference=reference)
    if not acc.usable:
        return None
    arch = bind_architecture(config=candidate.config, tensor_names=candidate.tensors.names(), source=candidate.source)
    reader = LayerReader(tensors=candidate.tensors, arch=arch)
    for li in list(range(arch.num_layers)) if layers is None else list(layers):
        acc.add(reader.read(li, with_ffn=with_ffn))
    return acc.scores()
