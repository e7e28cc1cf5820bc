"""Confidence intervals of the merge-protection benchmark.

- One seed, one model: the 95% interval of an accuracy on n test examples (normal approximation, in points).
- One seed, two models on the same examples (protected vs unprotected standalone): the paired difference of
  per-example correctness, d_i in {-1, 0, 1}; mean ± 1.96·sd(d)/√n. Pairing removes the examples both get right
  or wrong, so a one-point change is resolved on 1500 examples when the models disagree on a few percent.
- Across seeds: the mean of the per-seed values ± t(0.975, k-1)·sd/√k (Student's t, k seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Z95 = 1.959964
# t(0.975, df) for df = 1..30 (Student's t quantiles); beyond 30 the normal value is close enough.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def accuracy_ci(correct: torch.Tensor) -> dict[str, float]:
    """Accuracy (points) of a boolean per-example vector with its 95% interval."""
    n = len(correct)
    p = float(correct.float().mean())
    half = 100.0 * Z95 * math.sqrt(max(p * (1 - p), 1e-12) / n)
    return {"value": 100.0 * p, "low": 100.0 * p - half, "high": 100.0 * p + half, "n": n}


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """accuracy(a) − accuracy(b) in points over the same examples, with its paired 95% interval."""
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs the same examples: {tuple(a.shape)} vs {tuple(b.shape)}")
    d = a.float() - b.float()
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(unbiased=True)) if n > 1 else 0.0
    half = 100.0 * Z95 * sd / math.sqrt(n)
    return {"value": 100.0 * mean, "low": 100.0 * mean - half, "high": 100.0 * mean + half, "n": n,
            "disagree": float((d != 0).float().mean())}


def across_seeds(values: Sequence[float]) -> dict[str, float]:
    """Mean of per-seed values with a Student-t 95% interval (None bounds with one seed)."""
    k = len(values)
    if k == 0:
        raise ValueError("no values")
    mean = sum(values) / k
    if k == 1:
        return {"mean": mean, "low": None, "high": None, "k": 1, "min": mean, "max": mean}  # type: ignore[dict-item]
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    t = T95[k - 2] if k - 1 <= len(T95) else Z95
    half = t * sd / math.sqrt(k)
    return {"mean": mean, "low": mean - half, "high": mean + half, "k": k, "min": min(values), "max": max(values)}
