"""Attacks on a released update, by name: what a merger does with the real tools, and the adaptive attacks of an
attacker who knows the protection and holds the public base.

    from hubguard.protect.attacks import AttackSetting, run_attacks
    results = run_attacks(setting, names=("task_arithmetic", "realign", "regmean"))

Each attack returns a JSON-ready dict (method, coefficient, val_score, test, ...); `verdict` adds whether the
protection held (the protected task's merged score at or below the base's). Names, in ATTACKS:

- merges (mergekit kernels): task_arithmetic, ties, dare_ties, slerp (t = 1 drops the protected update);
- kept_at_1 (protected at 1, others tuned), two_protected (a second task's update protected too);
- realign (undo per-head locks against the base, then task arithmetic: the Anchor-Guided Attack);
- refinetune (a short re-fine-tune of the protected update, then task arithmetic), finetune_after_merge;
- learned (per-layer coefficients trained on the attacker's data, AdaMerging-style), regmean (RegMean);
- realign+NAME for every other attack NAME but task_arithmetic (that is realign) and slerp: realign first, then
  that attack (`COMPOSED_ATTACKS`). A lock and a trap protect against different attacks; an attacker who strips the
  lock faces the trap alone.

`without_update_baselines(setting, names=...)` runs every attack with the protected update left out; passed to
`run_attacks(baselines=...)`, each verdict also says what the update adds (`update_gain`) beyond what the other
updates and the attacker's own data give without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from hubguard.errors import ProtectionError
from hubguard.protect.attacks.base import (
    DEFAULT_COEFFICIENTS,
    AttackerModel,
    AttackResult,
    AttackSetting,
    best_coefficient,
)
from hubguard.protect.attacks.learned import learned
from hubguard.protect.attacks.merging import after_realign, kept_at_1, merge_attack, realign, slerp, two_protected
from hubguard.protect.attacks.refit import finetune_after_merge, refinetune
from hubguard.protect.attacks.regmean import regmean
from hubguard.utils import get_logger, progress

logger = get_logger(__name__)

Attack = Callable[[AttackSetting], dict[str, Any]]
ATTACKS: dict[str, Attack] = {
    "task_arithmetic": merge_attack("task_arithmetic"),
    "ties": merge_attack("ties"),
    "dare_ties": merge_attack("dare_ties"),
    "slerp": slerp,
    "kept_at_1": kept_at_1,
    "two_protected": two_protected,
    "realign": realign,
    "refinetune": refinetune,
    "finetune_after_merge": finetune_after_merge,
    "learned": learned,
    "regmean": regmean,
}
# Realign, then another attack ("realign" itself is realign, then task arithmetic; SLERP is left out: it drops the
# update, realigned or not).
COMPOSED_ATTACKS = tuple(f"realign+{n}" for n in ATTACKS if n not in ("realign", "task_arithmetic", "slerp"))
ATTACKS.update({f"realign+{n}": after_realign(n, ATTACKS[n]) for n in ATTACKS if f"realign+{n}" in COMPOSED_ATTACKS})
ADAPTIVE_ATTACKS = ("realign", "refinetune", "learned", "regmean")


def check_attack_names(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise ProtectionError(f"Unknown attack(s) {unknown or list(names)}; choose from {sorted(ATTACKS)} "
                              "(comma-separated on the command line).")
    return tuple(dict.fromkeys(names))


def verdict(result: Mapping[str, Any], *, key: str, zero_shot: float, higher_is_better: bool = True,
            without_update: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`result` plus the verdict: `protected` when the protected task's merged score is no better than the base's
    (zero-shot): at or below it for a score, at or above it for a loss.

    `without_update` (the same attack's result with the protected update left out, `without_update_baselines`): also
    `without_update` (its score and coefficient), `update_gain` (what the update adds to the attacker's best without
    it, in the score's units; for a loss, how much lower the loss is with it) and `held_without_update`: the merge is no
    better than both the base and the attacker's best without the update, i.e. the update gave the attacker nothing.
    Other tasks' updates can lift the protected task above zero-shot on their own; this verdict does not count that.
    """
    score = float(result["test"][key])
    held = score <= zero_shot if higher_is_better else score >= zero_shot
    out = {**result, "protected_score": score, "zero_shot": zero_shot, "protected": held}
    if without_update is not None:
        alone = float(without_update["test"][key])
        gain = score - alone if higher_is_better else alone - score
        out.update(without_update={"score": alone, "coefficient": without_update.get("coefficient")},
                   update_gain=gain, held_without_update=held or gain <= 0)
    return out


def without_update_baselines(setting: AttackSetting, *, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each named attack with the protected update left out (the base in its place): what the attacker reaches on the
    protected task without it, from the other updates and its own data. It does not depend on the protection, so one
    run serves every protection of the same setting (`run_attacks(baselines=...)`)."""
    names = check_attack_names(names)
    empty = replace(setting, protected=setting.base)
    out = {}
    for name in progress(list(names), desc="attacks without the update"):
        c0 = time.process_time()
        out[name] = {**ATTACKS[name](empty), "cpu_seconds": time.process_time() - c0}
    return out


def run_attacks(setting: AttackSetting, *, names: Sequence[str],
                baselines: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Run the named attacks; each result carries its verdict against the base's score (`setting.verdict_key`) and
    `cpu_seconds`, the CPU time the attack took in this process. `baselines` (`without_update_baselines` of the same
    setting, for these names or more): each verdict also says what the update adds to the attacker's best without it."""
    names = check_attack_names(names)
    missing = [n for n in names if baselines is not None and n not in baselines]
    if missing:
        raise ProtectionError(f"baselines lack {missing}: run without_update_baselines(setting, names=...) with every "
                              "attack you run.")
    zero_shot = float(setting.test_metrics(setting.base)[setting.verdict_key])
    out = {}
    for name in progress(list(names), desc="attacks"):
        c0 = time.process_time()
        out[name] = verdict(ATTACKS[name](setting), key=setting.verdict_key, zero_shot=zero_shot,
                            higher_is_better=setting.higher_is_better,
                            without_update=None if baselines is None else baselines[name])
        out[name]["cpu_seconds"] = time.process_time() - c0  # this process's CPU time: what the attack costs
        logger.info("attack %s: %s %.4g (zero-shot %.4g)", name, setting.verdict_key, out[name]["protected_score"],
                    zero_shot)
    return out


__all__ = ["ADAPTIVE_ATTACKS", "ATTACKS", "COMPOSED_ATTACKS", "DEFAULT_COEFFICIENTS", "AttackResult", "AttackSetting",
           "AttackerModel", "best_coefficient", "check_attack_names", "run_attacks", "verdict", "without_update_baselines"]
