"""Which validation checkpoint a Trap² run keeps (`ProtectConfig.selection="trap"`): the Pareto front of
(standalone score high, trap score low), and the most protected checkpoint within tolerance of the reference that
is also at least `min_gain` more protected than the starting state; otherwise the starting state itself."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Candidate:
    step: int
    standalone: float  # validation score at s = 1 (higher is better)
    trap: float  # validation score at the probe scales, aggregated (lower is more protected)
    state: dict[str, Any]


class TrapSelector:
    """Keeps the Pareto front of (standalone high, trap low) checkpoints and the first candidate (the starting
    state); picks the most protected one whose standalone score is within `tolerance` of the reference (the best
    standalone score seen, or with `from_start` the starting state's) and whose trap score is at least `min_gain`
    below the starting state's. The starting state needs no gain: it is what is kept when nothing qualifies."""

    def __init__(self, tolerance: float, *, from_start: bool = False, min_gain: float = 0.0) -> None:
        self.tolerance = tolerance
        self.from_start = from_start
        self.min_gain = min_gain
        self.reference = -math.inf
        self.start: Candidate | None = None
        self.front: list[Candidate] = []
        self.within_seen = 0  # candidates after the start that were within tolerance when they were added
        self.outside_seen = 0  # candidates after the start that were outside tolerance
        self.too_little_gain = 0  # checkpoints left out before their s = 1 score (gain below min_gain)

    def add(self, cand: Candidate) -> bool:
        """Record `cand`; True when it is within tolerance of the reference (the update still works)."""
        if self.start is None:
            self.start = cand
        if not self.from_start or self.reference == -math.inf:  # "start": the first candidate fixes it
            self.reference = max(self.reference, cand.standalone)
        if not any(c.standalone >= cand.standalone and c.trap <= cand.trap for c in self.front):
            self.front = [c for c in self.front if not (cand.standalone >= c.standalone and cand.trap <= c.trap)]
            self.front.append(cand)
        works = self.within(cand)
        self.within_seen += works and cand is not self.start
        self.outside_seen += not works and cand is not self.start
        return works

    def within(self, cand: Candidate) -> bool:
        return cand.standalone >= self.reference - self.tolerance

    def gain(self, cand: Candidate) -> float:
        """How much lower `cand`'s trap score is than the starting state's (0 for the start itself)."""
        return self.gain_of(cand.trap)

    def gain_of(self, trap: float) -> float:
        """The gain a checkpoint with trap score `trap` would have (0 before the start is added)."""
        return 0.0 if self.start is None else self.start.trap - trap

    def out_of_running(self, trap: float) -> bool:
        """True when a checkpoint with this trap score cannot be kept whatever its s = 1 score: it gains less than
        `min_gain`, and with `from_start` its s = 1 score moves no reference (so it need not be measured)."""
        return self.from_start and self.min_gain > 0 and self.gain_of(trap) < self.min_gain - 1e-9

    def note_too_little_gain(self) -> None:
        """A checkpoint was left out unscored at s = 1 because its gain is below `min_gain` (for `why_start`)."""
        self.too_little_gain += 1

    def gains_enough(self, cand: Candidate) -> bool:
        return cand is self.start or self.gain(cand) >= self.min_gain - 1e-9  # out_of_running's complement

    def best(self) -> Candidate | None:
        # A dominated candidate gains no more than the one dominating it, so the front suffices, plus the start
        # (it qualifies without a gain, so a checkpoint that dominates it but gains too little must not hide it).
        pool = self.front if self.start is None or self.start in self.front else [*self.front, self.start]
        ok = [c for c in pool if self.within(c) and self.gains_enough(c)]
        return min(ok, key=lambda c: (c.trap, -c.standalone)) if ok else None

    def to_repair(self) -> Candidate | None:
        """The checkpoint worth repairing (`hubguard.protect.repair`): the most protected one after the start that
        gains enough but lost more than the tolerance at s = 1, if it is more protected than what `best()` keeps."""
        kept = self.best()
        bar = math.inf if kept is None or kept is self.start else kept.trap
        lost = [c for c in self.front if c is not self.start and self.gains_enough(c) and not self.within(c)
                and c.trap < bar]
        return min(lost, key=lambda c: (c.trap, -c.standalone)) if lost else None

    def describe(self, chosen: Candidate) -> dict[str, Any]:
        """What `ProtectResult.selected` records of the kept candidate."""
        return {"step": chosen.step, "standalone": chosen.standalone, "trap": chosen.trap,
                "reference": self.reference, "tolerance": self.tolerance, "trap_gain": self.gain(chosen),
                "min_trap_gain": self.min_gain, "start_trap": None if self.start is None else self.start.trap}

    def why_start(self) -> str:
        """Why the starting state was kept (for the warning)."""
        if self.too_little_gain:
            return (f"{self.too_little_gain} checkpoint(s) were less than min_trap_gain = {self.min_gain} more protected "
                    "at the probe scales than the start (their s = 1 score was not needed) and "
                    f"{self.outside_seen} more protected one(s) lost more than {self.tolerance} at s = 1")
        if self.within_seen:
            return (f"{self.within_seen} checkpoint(s) stayed within {self.tolerance} of the reference at s = 1, but "
                    f"none was at least min_trap_gain = {self.min_gain} more protected at the probe scales than the "
                    "start")
        return f"no Trap² checkpoint stayed within {self.tolerance} of the reference at s = 1"
