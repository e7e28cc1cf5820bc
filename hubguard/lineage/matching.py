"""Matching heads to heads and experts to experts, for every layer pair at once.

Inputs are unit sketches (`hubguard.lineage.unit_terms`): per layer and unit, `UNIT_COPIES` independent
sketches of each term. For a layer pair, the unit-by-unit score matrix (100 × sketch cosine, averaged over the
terms both sides have) is built from copy 0 to *pick* the pairs and from copy 1 to *score* them: picking the
best of many noisy pairs then cannot lift the score of unrelated models (their copy-1 scores of pairs picked
on copy 0 average zero, whatever the head counts), while the true pairs of a derivative score high on both.

- heads: one to one, greedily (the best remaining pair first; exact for a derivative, whose true pairs
  dominate). A candidate with fewer heads (pruned, or only a few heads read) matches a subset of the
  reference's heads; the score is the mean over matched pairs.
- experts: each candidate expert to its best reference expert (many to one: the experts of a MoE upcycled
  from a dense model all match its one FFN; permuted experts find their partners). A shared expert is one
  more expert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

PICK, SCORE = 0, 1  # which sketch copy picks the pairs, which scores them


@dataclass(frozen=True)
class UnitMatch:
    """For every layer pair (i of A, j of B): score [La, Lb] on the 0-100 scale, pick [La, Lb] (the same on the
    picking copy, used to choose between readings), and pairs [La, Lb, m, 2] of (B unit, A unit) indices."""

    score: "torch.Tensor"
    pick: "torch.Tensor"
    pairs: "torch.Tensor"
    pair_scores: "torch.Tensor"  # [La, Lb, m]


def unit_cosines(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], *, copy: int) -> "torch.Tensor":
    """[La, Lb, Ua, Ub]: 100 × cosine of sketch `copy` between every unit of every layer, mean over shared terms.
    a[t]: [La, Ua, C, r, r], b[t]: [Lb, Ub, C, r, r]."""
    import torch

    terms = sorted(set(a) & set(b))
    total = None
    for t in terms:
        va = torch.nn.functional.normalize(a[t][:, :, copy].flatten(2).float(), dim=-1)  # [La, Ua, k]
        vb = torch.nn.functional.normalize(b[t][:, :, copy].flatten(2).float(), dim=-1)  # [Lb, Ub, k]
        c = torch.einsum("iak,jbk->ijab", va, vb)
        total = c if total is None else total + c
    assert total is not None, "no shared unit term"
    return 100.0 * total / len(terms)


def _masked(c: "torch.Tensor", valid_a: "torch.Tensor | None", valid_b: "torch.Tensor | None") -> "torch.Tensor":
    """Scores of padding units (absent experts) set to -inf. valid_a: [La, Ua] bool, valid_b: [Lb, Ub]."""
    import torch

    if valid_a is not None:
        c = c.masked_fill(~valid_a[:, None, :, None], -torch.inf)
    if valid_b is not None:
        c = c.masked_fill(~valid_b[None, :, None, :], -torch.inf)
    return c


CHUNK_VALUES = 1 << 22  # unit-pair scores held at once: A's layers are matched in chunks of this size


def _by_chunks(match: "Callable[..., UnitMatch]", a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], *,
               valid_a: "torch.Tensor", valid_b: "torch.Tensor") -> UnitMatch:
    """`match` over chunks of A's layers (memory stays bounded for deep models with many heads or experts)."""
    import torch

    La, Ua, Lb, Ub = valid_a.shape[0], valid_a.shape[1], valid_b.shape[0], valid_b.shape[1]
    step = max(1, CHUNK_VALUES // max(Lb * Ua * Ub, 1))
    parts = [match({t: m[i : i + step] for t, m in a.items()}, b, valid_a=valid_a[i : i + step], valid_b=valid_b)
             for i in range(0, La, step)]
    if len(parts) == 1:
        return parts[0]
    return UnitMatch(**{f: torch.cat([getattr(p, f) for p in parts]) for f in ("score", "pick", "pairs", "pair_scores")})


def match_heads(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], *, valid_a: "torch.Tensor",
                valid_b: "torch.Tensor") -> UnitMatch:
    """Greedy one-to-one head matching for every layer pair (picked on copy PICK, scored on copy SCORE).
    valid_a / valid_b: [L, H] bool, which head slots hold a head (layers may have different head counts)."""
    return _by_chunks(_match_heads, a, b, valid_a=valid_a, valid_b=valid_b)


def _match_heads(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], *, valid_a: "torch.Tensor",
                 valid_b: "torch.Tensor") -> UnitMatch:
    import torch

    pick = _masked(unit_cosines(a, b, copy=PICK), valid_a, valid_b)  # [La, Lb, Ha, Hb]
    score = unit_cosines(a, b, copy=SCORE)
    La, Lb, Ha, Hb = pick.shape
    work = pick.reshape(La, Lb, Ha * Hb)
    flat_score = score.reshape(La, Lb, Ha * Hb)
    rows = torch.arange(Ha)[:, None].expand(Ha, Hb).reshape(-1)
    cols = torch.arange(Hb)[None, :].expand(Ha, Hb).reshape(-1)
    pairs, picked, scored = [], [], []
    for _ in range(min(Ha, Hb)):
        best = work.argmax(dim=-1)  # [La, Lb]: the best remaining pair of each layer pair
        ra, cb = rows[best], cols[best]
        picked.append(work.gather(-1, best[..., None])[..., 0])
        scored.append(flat_score.gather(-1, best[..., None])[..., 0])
        pairs.append(torch.stack([cb, ra], dim=-1))
        taken = (rows[None, None, :] == ra[..., None]) | (cols[None, None, :] == cb[..., None])
        work = work.masked_fill(taken, -torch.inf)
    picked_t = torch.stack(picked, dim=-1)  # [La, Lb, m]; -inf where a layer pair ran out of heads
    valid = torch.isfinite(picked_t)
    pair_scores = torch.where(valid, torch.stack(scored, dim=-1), torch.full_like(picked_t, float("nan")))
    count = valid.sum(dim=-1).clamp_min(1)
    mean = lambda v: torch.where(valid, v, torch.zeros_like(v)).sum(dim=-1) / count  # noqa: E731
    return UnitMatch(score=mean(pair_scores), pick=mean(picked_t), pairs=torch.stack(pairs, dim=-2),
                     pair_scores=pair_scores)


def match_experts(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], *, valid_a: "torch.Tensor",
                  valid_b: "torch.Tensor") -> UnitMatch:
    """Each B expert to its best A expert (picked on copy PICK, scored on copy SCORE), for every layer pair.
    valid_a / valid_b: [L, E] bool, which expert slots hold an expert (layers may have different counts)."""
    return _by_chunks(_match_experts, a, b, valid_a=valid_a, valid_b=valid_b)


def _match_experts(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], *, valid_a: "torch.Tensor",
                   valid_b: "torch.Tensor") -> UnitMatch:
    import torch

    pick = _masked(unit_cosines(a, b, copy=PICK), valid_a, valid_b)  # [La, Lb, Ea, Eb]
    score = unit_cosines(a, b, copy=SCORE)
    best_val, best_a = pick.max(dim=2)  # [La, Lb, Eb]
    pair_scores = score.gather(2, best_a[:, :, None, :])[:, :, 0, :]  # [La, Lb, Eb]
    valid = valid_b[None, :, :].expand_as(pair_scores)
    count = valid.sum(dim=-1).clamp_min(1)
    mean = lambda v: torch.where(valid, v, torch.zeros_like(v)).sum(dim=-1) / count  # noqa: E731
    eb = torch.arange(pair_scores.shape[-1]).expand_as(best_a)
    return UnitMatch(score=mean(pair_scores), pick=mean(best_val), pairs=torch.stack([eb, best_a], dim=-1),
                     pair_scores=torch.where(valid, pair_scores, torch.full_like(pair_scores, float("nan"))))
