"""Attacks that merge the released weights as they are, or after undoing a lock: mergekit's task arithmetic, TIES,
DARE-TIES and SLERP at the attacker's best coefficient; the protected update kept at 1 while the others are tuned;
two protected updates in one merge; realign to the base, then task arithmetic; realign, then any other attack
(`after_realign`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from hubguard.protect.attacks.base import AttackSetting, StateDict, best_coefficient
from hubguard.protect.merges import merge_states


def task_arithmetic_over(setting: AttackSetting, models: list[StateDict], *, method: str = "task_arithmetic",
                         name: str | None = None, fixed_first: bool = False) -> dict[str, Any]:
    """`method` over `models` with one coefficient for all (or `fixed_first`: the first at 1, the others at c),
    the coefficient chosen on validation."""

    def build(c: float) -> StateDict:
        weights = [1.0 if fixed_first and i == 0 else c for i in range(len(models))]
        return merge_states(method, base=setting.base, models=models, weights=weights, density=setting.density,
                            seed=setting.seed)

    res = best_coefficient(method=name or method, build=build, coefficients=setting.coefficients,
                           val_score=setting.val_score, test_metrics=setting.test_metrics)
    return asdict(res)


def merge_attack(method: str) -> Any:
    def attack(setting: AttackSetting) -> dict[str, Any]:
        return task_arithmetic_over(setting, [setting.protected, *setting.others], method=method)

    attack.__doc__ = f"mergekit {method} of the protected update with the others, one coefficient, tuned."
    return attack


def slerp(setting: AttackSetting) -> dict[str, Any]:
    """mergekit SLERP between the protected update and the first other one, t tuned on [0, 1]: t = 1 is the other
    model alone, so an attacker can drop the protected update when merging it does not pay."""
    models = [setting.protected, setting.others[0]]
    grid = sorted({min(1.0, c) for c in setting.coefficients} | {0.5, 1.0})

    def build(t: float) -> StateDict:
        return merge_states("slerp", base=setting.base, models=models, weights=[t], seed=setting.seed)

    return asdict(best_coefficient(method="slerp", build=build, coefficients=grid, val_score=setting.val_score,
                                   test_metrics=setting.test_metrics))


def kept_at_1(setting: AttackSetting) -> dict[str, Any]:
    """Task arithmetic with the protected update at coefficient 1 (where it works as released), others tuned."""
    return task_arithmetic_over(setting, [setting.protected, *setting.others], name="kept_at_1", fixed_first=True)


def two_protected(setting: AttackSetting) -> dict[str, Any]:
    """Task arithmetic where a second task's update is protected too (it replaces `others[0]`)."""
    second = setting.needs("second_protected", "two_protected")
    return task_arithmetic_over(setting, [setting.protected, second, *setting.others[1:]], name="two_protected")


def _realigned(setting: AttackSetting, *, attack: str) -> StateDict:
    """The protected update with any per-head lock undone against the public base (`hubguard.protect.realign`)."""
    from hubguard.protect.realign import realign_state_dict

    config = setting.needs("model_config", attack)
    return realign_state_dict(setting.protected, base=setting.base, model_config=config)


def realign(setting: AttackSetting) -> dict[str, Any]:
    """Undo any per-head lock against the public base (`hubguard.protect.realign`), then task arithmetic."""
    realigned = _realigned(setting, attack="realign")
    out = task_arithmetic_over(setting, [realigned, *setting.others], name="realign")
    out["standalone_after"] = {k: float(v) for k, v in setting.test_metrics(realigned).items()}
    return out


def after_realign(name: str, attack: Callable[[AttackSetting], dict[str, Any]]) -> Callable[[AttackSetting], dict[str, Any]]:
    """The attack `name` run on the realigned update: what a determined attacker composes, since realign strips a
    lock and leaves whatever else the update does, and `attack` may then beat that (e.g. RegMean on a Trap² update)."""

    def composed(setting: AttackSetting) -> dict[str, Any]:
        out = attack(replace(setting, protected=_realigned(setting, attack=f"realign+{name}")))
        return {**out, "method": f"realign+{out.get('method', name)}"}

    first = (attack.__doc__ or "").strip().split("\n")[0]
    composed.__doc__ = f"realign to the base, then {name}" + (f": {first}" if first else ".")
    return composed
