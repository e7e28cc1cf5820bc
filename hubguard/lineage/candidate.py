"""The candidate of a verification: a fingerprint, and the weights it came from whenever they are at hand.

Every verdict (`hubguard compare`, the pre-upload check, the webhook bot, registry search, the Space) is made
on a `Candidate`, so they all see the same evidence. With weights, the candidate's layers are also read
through each reference's token rows (`hubguard.lineage.cross`), which finds layers copied under another
embedding; that reading is done in one pass over the candidate's layers for all references still unseen, and
remembered, so no layer is read twice for a reference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubguard.lineage.fingerprints import Fingerprint

if TYPE_CHECKING:
    from hubguard.lineage.cross import CrossTerms
    from hubguard.weights.model import ModelWeights
    from hubguard.weights.source import Checkpoint

@dataclass(frozen=True, eq=False)
class Candidate:
    """A model to verify. `weights` is None for a saved fingerprint (then only its own-embedding terms count)."""

    fingerprint: Fingerprint
    weights: "ModelWeights | None" = None
    _cross: dict[int, tuple[Fingerprint, Any]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.fingerprint.name

    @property
    def reads_cross(self) -> bool:
        """True when the candidate's layers can be read through a reference's token rows (weights at hand and
        whole attention matrices read, not head slices)."""
        plan = self.fingerprint.stats.get("plan") or {}
        return self.weights is not None and plan.get("mode", "full") != "qk_heads"

    def remember(self, accumulators: "Sequence[CrossTerms]") -> None:
        """Keep the cross readings of accumulators fed during the fingerprinting pass."""
        for acc in accumulators:
            self._cross[id(acc.reference)] = (acc.reference, acc.reading())

    def cross_readings(self, references: Sequence[Fingerprint]) -> list[Any]:
        """Per reference, the candidate's layers read through its token rows (`CrossTerms.reading`) or None;
        one pass over the candidate's layers serves every reference not seen before."""
        from hubguard.lineage.cross import CrossTerms
        from hubguard.weights.plan import ReadPlan

        todo = list({id(r): r for r in references if id(r) not in self._cross and r.probe is not None}.values())
        if todo and self.reads_cross and self.weights is not None:
            accs = [CrossTerms(reference=r) for r in todo]
            plan = ReadPlan.from_dict(self.fingerprint.stats["plan"])
            for layer in self.weights.layers(plan, desc=f"cross-read {self.name}"):
                for acc in accs:
                    acc.add(layer)
            self.remember(accs)
        return [self._cross.get(id(r), (r, None))[1] for r in references]


def open_candidate(
    item: "Candidate | Fingerprint | Checkpoint | ModelWeights | str | os.PathLike[str]",
    *,
    references: Sequence[Fingerprint] = (),
    name: str | None = None,
    family: str | None = None,
    allow_pickle: bool = False,
    token: str | None = None,
    budget: "float | str | None" = "auto",
    max_layers: int | None = None,
    base: "str | os.PathLike[str] | None" = None,
) -> Candidate:
    """A candidate from weights (a folder, a `.safetensors` file, `hf://ORG/NAME[@REV]`), a saved fingerprint
    file, or a Fingerprint. With weights and `references` known up front, their cross-embedding readings are
    made in the same pass as the fingerprint. `base`: where a PEFT adapter's base is (see `open_model`)."""
    from hubguard.lineage.cross import CrossTerms
    from hubguard.lineage.fingerprint_files import is_fingerprint_file, load_fingerprint
    from hubguard.lineage.fingerprints import fingerprint_weights
    from hubguard.weights.model import ModelWeights, open_model
    from hubguard.weights.source import Checkpoint

    if isinstance(item, Candidate):
        return item
    if isinstance(item, Fingerprint):
        return Candidate(fingerprint=item)
    if not isinstance(item, (Checkpoint, ModelWeights)) and is_fingerprint_file(item):
        return Candidate(fingerprint=load_fingerprint(item))
    weights = item if isinstance(item, ModelWeights) else open_model(item, family=family, allow_pickle=allow_pickle,
                                                                      token=token, base=base)
    accs = [CrossTerms(reference=r) for r in references if r.probe is not None]

    def feed(layer: Any) -> None:
        for acc in accs:
            acc.add(layer)

    fp = fingerprint_weights(weights=weights, name=name or weights.source, budget=budget, max_layers=max_layers,
                             on_layer=feed if accs else None)
    candidate = Candidate(fingerprint=fp, weights=weights)
    if candidate.reads_cross:
        candidate.remember(accs)
    return candidate
