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
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from protect_setup import Setting
from protect_train import Recipe, Trained, train_plain, train_trap2

from hubguard.protect.lock import LockConfig, lock_state_dict, plan_lock

PROXY_TASK = "doc_kind"  # in the task snapshot, never merged by the attacker (protect.py's TASKS)
PUBLIC_SEED_OFFSET = 1000  # trap2-public's own runs of the public tasks: seeds the attacker's runs never use


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


def _proxy_delta(ctx: Context, task: str) -> tuple[dict[str, torch.Tensor], float]:
    """The protector's own update of a public task the attacker does not merge (`doc_kind`), one epoch from the
    base, as a weight delta; with its CPU seconds (once per context: it depends on the base only)."""
    key = ("proxy", PROXY_TASK)
    if key not in ctx.cache:
        n_train, n_val, n_test = ctx.setting.sizes[task]
        s = Setting(names=[PROXY_TASK], n_train=n_train, n_val=n_val, n_test=n_test)
        t = train_plain(s, PROXY_TASK, recipe=ctx.recipe, seed=ctx.seed, epochs=1)
        delta = {n: t.state[n] - s.base_state[n] for n in s.top_names}
        ctx.cache[key] = Released(delta, t.seconds, {"task": PROXY_TASK, "steps": t.result.steps,
                                                     "val": t.result.selected})
    got = ctx.cache[key]
    return got.state, got.seconds


def _public_deltas(ctx: Context, task: str) -> tuple[list[dict[str, torch.Tensor]], float, dict[str, Any]]:
    """The protector's own runs (seed + 1000, the plain recipe) of the other public tasks, i.e. the tasks the attacker
    merges, never the attacker's runs: proxies for the public fine-tunes of the base a merger would pick up."""
    s = ctx.setting
    runs = {t: train_plain(s, t, recipe=ctx.recipe, seed=ctx.seed + PUBLIC_SEED_OFFSET) for t in s.names if t != task}
    deltas = [{n: r.state[n] - s.base_state[n] for n in s.top_names} for r in runs.values()]
    info = {t: {"steps": r.result.steps, "seconds": r.seconds, "val": r.result.selected} for t, r in runs.items()}
    return deltas, sum(r.seconds for r in runs.values()), info


def _proxy_design(source: str, scale: tuple[float, float] | None) -> Callable[[Context, str], Released]:
    """Trap² whose trap passes are all merges with proxy updates at coefficients c ~ U[scale]
    (`ProtectConfig.proxy_mix` 1: protect_proxy_probe.json), from `doc_kind` (a task the attacker never merges) or
    from the public tasks. `scale` None: the recipe's `proxy_scale` (`--recipe '{"proxy_scale": [lo, hi]}'`); a
    design with its own scale refuses a recipe that sets one, rather than ignore it."""

    def run(ctx: Context, task: str) -> Released:
        defaults = {f.name: f.default for f in fields(Recipe)}
        own = tuple(ctx.recipe.proxy_scale)
        if ctx.recipe.proxy_mix != defaults["proxy_mix"] or (scale is not None and own != defaults["proxy_scale"]):
            raise SystemExit(f"this proxy design sets proxy_mix 1{'' if scale is None else f' and proxy_scale {scale}'}"
                             " itself: drop it from --recipe")
        if source == "doc_kind":
            delta, proxy_seconds = _proxy_delta(ctx, task)
            deltas, proxy_info = [delta], {**ctx.cache[("proxy", PROXY_TASK)].info, "seconds": proxy_seconds}
        else:
            deltas, proxy_seconds, proxy_info = _public_deltas(ctx, task)
        changes = {"proxy_mix": 1.0, "proxy_scale": own if scale is None else scale}
        t = train_trap2(ctx.setting, task, ctx.plain[task], recipe=ctx.recipe.with_(**changes), seed=ctx.seed,
                        proxies=deltas)
        # the proxies depend on the base only: a publisher trains (or downloads) them once for every release
        info = {"selected": t.result.selected, "steps": t.result.steps, "validation": _validation(t),
                "variant": changes, "proxy": proxy_info, "proxy_seconds": proxy_seconds, "trap_seconds": t.seconds,
                **({"attempts": list(t.result.attempts)} if ctx.recipe.retries else {})}
        return Released(t.state, t.seconds + proxy_seconds, info, t)

    return run


# Aimed at the attacks Trap² leaves open (protect.py's docstring): a short re-fine-tune before merging (the trap is
# trained at the re-fine-tuned update: 5 sign steps of 7.5e-4, i.e. the displacement of the attacker's 75 AdamW
# steps at 5e-5, refreshed every 10 steps), and the protected update kept at 1 while others are merged in (a
# random perturbation of the adapted weights as large as the update itself, maximised too), and the merges at
# coefficient 1 (TA escapes there, benchmarks/README.md): the trap trained at merges with proxy updates, of a task the
# attacker never merges (trap2-proxy) or the protector's own runs of the public tasks a merger picks up (trap2-public).
DESIGNS: dict[str, Callable[[Context, str], Released]] = {
    "trap2-refit": _design(refit_steps=5, refit_lr=7.5e-4, refit_every=10),
    "trap2-mix": _design(interference=1.0, interference_weight=1.0),
    "trap2-proxy": _proxy_design("doc_kind", (0.5, 2.0)),  # one proxy, up to the size of three updates
    "trap2-public": _proxy_design("public", None),  # three proxies, each near a merge's coefficient (the recipe's
    # proxy_scale, default U[0.5, 1.5])
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
