"""The evidence of every layer pair of two fingerprints: attention from matched heads, FFN from whole terms or
matched experts.

For layer i of A (the reference) and j of B (the candidate):

- attention: heads matched one to one (`hubguard.lineage.matching.match_heads`), the mean score of the
  matched pairs: a head permutation, a per-head map or pruned heads change nothing for the heads that remain;
- FFN: when both layers have a dense FFN, the exact whole-FFN terms (`hubguard.lineage.terms`); when either is
  a mixture of experts, each B expert matched to its best A expert (`match_experts`; a dense FFN is one
  expert, so the experts upcycled from a dense FFN all match it).

A layer pair's score is the mean of the two parts it has. Each part also has a *pick* value, computed on the
sketch copy that chose the matches: the layer matching and the choice between readings use the pick values,
and the reported scores come from the other copy, so choosing the best of many pairs does not inflate them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubguard.errors import IncompatibleFingerprintError

if TYPE_CHECKING:
    import torch

    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.lineage.matching import UnitMatch


@dataclass(frozen=True)
class PairEvidence:
    """[La, Lb] scores of every layer pair: `score` (reported), `pick` (chooses), and the parts they come from."""

    score: "torch.Tensor"
    pick: "torch.Tensor"
    parts: dict[str, "torch.Tensor"]  # part name ("heads", "experts", or a whole FFN term) -> [La, Lb] scores
    heads: "UnitMatch | None"
    experts: "UnitMatch | None"


def _valid(counts: tuple[int, ...], width: int) -> "torch.Tensor":
    """[L, width] bool: slot u of layer l holds a unit (u < counts[l])."""
    import torch

    return torch.arange(width)[None, :] < torch.tensor(counts, dtype=torch.long)[:, None]


def whole_ffn_scores(*, a: "Fingerprint", b: "Fingerprint", ia: "torch.Tensor", ib: "torch.Tensor") -> dict[str, "torch.Tensor"]:
    """Per whole FFN term both have, [La, Lb] scores over the shared tokens."""
    from hubguard.lineage.similarity import layer_scores

    shared = sorted(t for t in set(a.terms) & set(b.terms) if t.startswith("ffn"))
    return {t: layer_scores(a.terms[t], b.terms[t], ia=ia, ib=ib) for t in shared}


def pair_evidence(*, a: "Fingerprint", b: "Fingerprint", ia: "torch.Tensor", ib: "torch.Tensor") -> PairEvidence:
    """Every layer pair's evidence (ia, ib: positions of the shared tokens in a and b)."""
    import torch

    from hubguard.lineage.matching import match_experts, match_heads

    scores: list[torch.Tensor] = []
    picks: list[torch.Tensor] = []
    parts: dict[str, torch.Tensor] = {}
    heads = experts = None
    if set(a.heads) & set(b.heads):
        heads = match_heads(a.heads, b.heads, valid_a=_valid(a.head_counts, next(iter(a.heads.values())).shape[1]),
                            valid_b=_valid(b.head_counts, next(iter(b.heads.values())).shape[1]))
        parts["heads"] = heads.score
        scores.append(heads.score)
        picks.append(heads.pick)
    whole = whole_ffn_scores(a=a, b=b, ia=ia, ib=ib)
    if whole:
        mean = torch.stack(list(whole.values())).mean(dim=0)
        parts |= whole
        scores.append(mean)
        picks.append(mean)
    elif set(a.experts) & set(b.experts):
        width = lambda fp: next(iter(fp.experts.values())).shape[1]  # noqa: E731
        experts = match_experts(a.experts, b.experts, valid_a=_valid(a.expert_counts, width(a)),
                                valid_b=_valid(b.expert_counts, width(b)))
        parts["experts"] = experts.score
        scores.append(experts.score)
        picks.append(experts.pick)
    if not scores:
        raise IncompatibleFingerprintError(f"'{a.name}' and '{b.name}' have no invariant term in common.")
    return PairEvidence(score=torch.stack(scores).mean(dim=0), pick=torch.stack(picks).mean(dim=0), parts=parts,
                        heads=heads, experts=experts)
