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

    from hubguard.checkpoint.source import Checkpoint
    from hubguard.lineage.fingerprint import Fingerprint


def cross_scores(
    *, reference: "Fingerprint", candidate: "Checkpoint", layers: list[int] | None = None, with_ffn: bool = True
) -> dict[str, "torch.Tensor"] | None:
    """Per shared term, [len(reference.layers), len(layers)] scores (0-100) of the candidate's layers read
    through the reference's token rows; None when not applicable (no probe, different hidden size)."""
    import torch

    from hubguard.checkpoint.architectures import bind_architecture
    from hubguard.checkpoint.canonical import LayerReader
    from hubguard.lineage.compare import _flatten_offdiag
    from hubguard.lineage.terms import layer_terms, standardise

    if reference.probe is None:
        return None
    arch = bind_architecture(config=candidate.config, tensor_names=candidate.tensors.names(), source=candidate.source)
    if arch.hidden_size != reference.probe.shape[1]:
        return None
    chosen = list(range(arch.num_layers)) if layers is None else list(layers)
    reader = LayerReader(tensors=candidate.tensors, arch=arch)
    x = reference.probe.float()
    per_term: dict[str, list[torch.Tensor]] = {}
    for li in chosen:
        for t, m in layer_terms(layer=reader.read(li, with_ffn=with_ffn), x=x).items():
            per_term.setdefault(t, []).append(standardise(m))
    idx = torch.arange(len(reference.tokens))
    out = {}
    for t in sorted(set(per_term) & set(reference.terms)):
        ref = _flatten_offdiag(reference.terms[t], idx)
        cand = _flatten_offdiag(torch.stack(per_term[t]), idx)
        out[t] = 100.0 * (ref @ cand.t())
    return out or None
