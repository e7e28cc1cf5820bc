"""Which validation checkpoint a Trap² run keeps (`ProtectConfig.selection="trap"`): the Pareto front of
(standalone score high, trap score low), and the most protected checkpoint within tolerance of the reference."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Candidate:
    step: int
    standalone: float  # validation score at s = 1 (higher is better)
    trap: float  # mean validation score at the probe scales (lower is more protected)
    state: dict[str, Any]


class TrapSelector:
    """Keeps the Pareto front of (standalone high, trap low) checkpoints; picks the most protected one whose
    standalone score is within `tolerance` of the reference: the best standalone score seen, or with
    `from_start` the first candidate's (the starting state)."""

    def __init__(self, tolerance: float, *, from_start: bool = False) -> None:
        self.tolerance = tolerance
        self.from_start = from_start
        self.reference = -math.inf
        self.front: list[Candidate] = []

    def add(self, cand: Candidate) -> bool:
        """Record `cand`; True when it is within tolerance of the reference (the update still works)."""
        if not self.from_start or self.reference == -math.inf:  # "start": the first candidate fixes it
            self.reference = max(self.reference, cand.standalone)
        if not any(c.standalone >= cand.standalone and c.trap <= cand.trap for c in self.front):
            self.front = [c for c in self.front if not (cand.standalone >= c.standalone and cand.trap <= c.trap)]
            self.front.append(cand)
        return cand.standalone >= self.reference - self.tolerance

    def best(self) -> Candidate | None:
        ok = [c for c in self.front if c.standalone >= self.reference - self.tolerance]
        return min(ok, key=lambda c: (c.trap, -c.standalone)) if ok else None
