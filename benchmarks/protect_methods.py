"""The protections the benchmark compares, by name: each turns a task's plain update into the released one.

- none: the plain update (the unprotected reference).
- trap2: Trap² continuing the plain update (protect_train.train_trap2).
- lock: hubguard's scale lock on the plain update (hubguard.protect.lock, gain 100, one direction per head from
  8 training batches, on the updated layers only); exact at s = 1, no training.
- trap2+lock: the Trap² update, locked.
- Designs beyond the paper (protect.py's docstring says what each aims at): registered in DESIGNS below.

Every method returns a `Released`: the state dict, the seconds it took on top of the plain update, and what to
record (the Trap² selection, the lock record).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from protect_setup import Setting
from protect_train import Recipe, Trained, train_trap2

from hubguard.protect.lock import LockConfig, lock_state_dict, plan_lock


@dataclass
class Released:
    state: dict[str, torch.Tensor]
    seconds: float  # CPU seconds on top of the plain update's training
    info: dict[str, Any] = field(default_factory=dict)
    trained: Trained | None = None  # the Trap² run, when there was one (trap2+lock reuses trap2's)


@dataclass
class Context:
    setting: Setting
    recipe: Recipe
    seed: int
    plain: dict[str, Trained]
    cache: dict[tuple[str, str], Released] = field(default_factory=dict)  # (method, task) -> released


def lock(ctx: Context, state: dict[str, torch.Tensor], task: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Scale-lock a state: directions from 8 training batches of `task`, the updated layers only."""
    s = ctx.setting
    model = copy.deepcopy(s.base)
    model.load_state_dict(state)
    split = s.data[task]["train"]
    calib = [{"input_ids": split.input_ids[i : i + 16], "attention_mask": split.mask[i : i + 16]}
             for i in range(0, 8 * 16, 16)]
    plan = plan_lock(model, config=LockConfig(gain=100.0, layers=s.top_layers), calibration=calib,
                     for_lora=ctx.recipe.mode == "lora")
    return lock_state_dict(state, plan), plan.record()


def _none(ctx: Context, task: str) -> Released:
    return Released(ctx.plain[task].state, 0.0)


def _trap2(ctx: Context, task: str) -> Released:
    t = train_trap2(ctx.setting, task, ctx.plain[task], recipe=ctx.recipe, seed=ctx.seed)
    return Released(t.state, t.seconds, {"selected": t.result.selected, "steps": t.result.steps,
                                         "validation": _validation(t)}, t)


def _lock(ctx: Context, task: str) -> Released:
    t0 = time.process_time()
    state, record = lock(ctx, ctx.plain[task].state, task)
    return Released(state, time.process_time() - t0, {"lock": record})


def _trap2_lock(ctx: Context, task: str) -> Released:
    trap = release(ctx, "trap2", task)
    t0 = time.process_time()
    state, record = lock(ctx, trap.state, task)
    return Released(state, trap.seconds + time.process_time() - t0, {**trap.info, "lock": record}, trap.trained)


def _validation(t: Trained) -> list[dict[str, float]]:
    return [{k: r[k] for k in ("step", "val_standalone", "val_trap")} for r in t.result.history if "val_trap" in r]


METHODS: dict[str, Callable[[Context, str], Released]] = {
    "none": _none,
    "trap2": _trap2,
    "lock": _lock,
    "trap2+lock": _trap2_lock,
}
def _design(**changes: Any) -> Callable[[Context, str], Released]:
    """Trap² with hubguard's variants of the objective (hubguard.protect.variants) switched on."""

    def run(ctx: Context, task: str) -> Released:
        t = train_trap2(ctx.setting, task, ctx.plain[task], recipe=ctx.recipe.with_(**changes), seed=ctx.seed)
        return Released(t.state, t.seconds, {"selected": t.result.selected, "steps": t.result.steps,
                                             "validation": _validation(t), "variant": changes}, t)

    return run


# Aimed at the attacks Trap² leaves open (protect.py's docstring): a short re-fine-tune before merging (the trap is
# trained at the re-fine-tuned update: 5 sign steps of 7.5e-4, i.e. the displacement of the attacker's 75 AdamW
# steps at 5e-5, refreshed every 10 steps), and the protected update kept at 1 while others are merged in (a
# random perturbation of the adapted weights as large as the update itself, maximised too).
DESIGNS: dict[str, Callable[[Context, str], Released]] = {
    "trap2-refit": _design(refit_steps=5, refit_lr=7.5e-4, refit_every=10),
    "trap2-mix": _design(interference=1.0, interference_weight=1.0),
}


def release(ctx: Context, method: str, task: str) -> Released:
    """The released update of `task` under `method` (computed once per context)."""
    key = (method, task)
    if key not in ctx.cache:
        fn = METHODS.get(method) or DESIGNS.get(method)
        if fn is None:
            raise SystemExit(f"unknown protection {method!r}; known: {sorted({*METHODS, *DESIGNS})}")
        torch.manual_seed(ctx.seed)
        ctx.cache[key] = fn(ctx, task)
    return ctx.cache[key]
