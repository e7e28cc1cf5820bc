"""Training in the merge-protection benchmark: the plain update of a task, and the protected one (Trap² continuing
the plain update, or one of hubguard's variants of it), for LoRA or full fine-tuning of the top layers.

Both go through `hubguard.protect.train_protected` on the cached-activation classifier of protect_setup.py.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from protect_setup import Classifier, Setting, full_state, lora_state

from hubguard.protect.config import ProtectConfig
from hubguard.protect.trainer import ProtectResult, train_protected


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of the plain updates and of the protection phase: "recipe 2" of benchmarks/README.md, tuned on
    LoRA quick seed 0 (protect_probe.json, "code_language/seed0/quick/..."); full fine-tuning inherits it untuned."""

    mode: str = "lora"
    lr: float = 3e-3  # plain updates (full fine-tuning: its own rate, see protect.py)
    epochs: int = 8  # at most; early stopping on the s = 1 validation accuracy, patience 2
    batch_size: int = 16
    lora_r: int = 16
    lam: float = 1.0
    trap_lr: float = 6e-3
    trap_budget: float = 0.5  # Trap² steps as a fraction of the plain run's steps
    weight: str = "inv"
    tolerance: float = 1.0  # validation accuracy points at s = 1 the kept checkpoint may lose
    # validation accuracy points the kept checkpoint's trap score must gain over the plain update's, or the plain
    # update is kept (ProtectConfig.min_trap_gain; benchmarks/README.md says how this value was chosen)
    min_trap_gain: float = 5.0
    evals: int = 3
    eval_from: float = 0.5
    probe_val: int = 128  # validation examples scoring the probe scales
    cap_factor: float = 1.0  # x log(classes), on each example's maximised loss
    project_conflicts: bool = True
    probe_scales: tuple[float, ...] = (0.3, 0.6)  # the attacker's coefficients below 1 (README, recipe 2)
    exclude: tuple[float, float] = (0.95, 1.05)
    scale_min: float = 0.2  # s ~ U[0.2, 1.3]: the attacker's range, not [0.05, 2] (README, recipe 2)
    scale_max: float = 1.3
    # hubguard's variants (ProtectConfig, hubguard.protect.variants): distill on in the Trap² recipe (recipe 2:
    # it kept the standalone accuracy the focused scale range cost; README), the others off
    distill: float = 1.0
    refit_steps: int = 0
    refit_lr: float = 1e-3
    refit_every: int = 10
    interference: float = 0.0
    interference_weight: float = 1.0
    lam_control: float = 0.0
    lam_slack: float = 0.0
    repair_steps: int = 0  # standalone-only steps from the most protected checkpoint beyond tolerance (repair.py)
    repair_lr: float | None = None
    proxy_mix: float = 0.0  # share of trap passes that are merges with the protector's proxy updates (variants.py)
    proxy_scale: tuple[float, float] = (0.5, 1.5)
    proxy_draw: str = "all"
    # when no checkpoint qualified, Trap² again from the plain update with twice the budget and new draws, this
    # many times (ProtectConfig.retries, `hubguard protect --retries`)
    retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> Recipe:
        return replace(self, **changes)


@dataclass
class Trained:
    state: dict[str, torch.Tensor]
    result: ProtectResult
    seconds: float  # CPU seconds of this process (one thread): what the time ratios use, as other jobs share the cores
    model: Any = None  # the trainable classifier (to continue training it)
    wall: float = 0.0


def _encoder(setting: Setting, recipe: Recipe, seed: int) -> torch.nn.Module:
    encoder = copy.deepcopy(setting.base)
    if recipe.mode == "lora":
        cfg = ProtectConfig(mode="lora", lora_r=recipe.lora_r, lora_dropout=0.1, seed=seed)
        from peft import LoraConfig, get_peft_model

        from hubguard.protect.trainer import resolve_target_modules

        torch.manual_seed(seed)  # the LoRA A init
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.effective_lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=resolve_target_modules(encoder, config=cfg), bias="none",
                          layers_to_transform=list(setting.top_layers))
        return get_peft_model(encoder, lora)
    for n, p in encoder.named_parameters():
        p.requires_grad_(n in setting.top_names)
    return encoder


def state_of(setting: Setting, classifier: Classifier, mode: str) -> dict[str, torch.Tensor]:
    return lora_state(setting, classifier.encoder) if mode == "lora" else full_state(setting, classifier.encoder)


def train_plain(setting: Setting, task: str, *, recipe: Recipe, seed: int, batches: list | None = None,
                epochs: int | None = None) -> Trained:
    """The plain update of `task`: early stopping on the s = 1 validation accuracy (patience 2)."""
    clf = Classifier(setting, _encoder(setting, recipe, seed), task)
    cfg = ProtectConfig(mode=recipe.mode, lam=0.0, learning_rate=recipe.lr, epochs=epochs or recipe.epochs,
                        batch_size=recipe.batch_size, early_stopping_patience=2, seed=seed)
    torch.manual_seed(seed)
    data = batches if batches is not None else _shuffled(setting, task, recipe.batch_size, seed)
    t0, c0 = time.perf_counter(), time.process_time()
    res = train_protected(clf, train_batches=data, config=cfg,
                          val_score_fn=lambda m: setting.accuracy(m.encoder, task, "val"))
    return Trained(state_of(setting, clf, recipe.mode), res, time.process_time() - c0, clf, time.perf_counter() - t0)


def _shuffled(setting: Setting, task: str, size: int, seed: int) -> list[dict[str, Any]]:
    """The training split in batches of `size`, in a seed-dependent order (the same order every epoch)."""
    split = setting.data[task]["train"]
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return [{"hidden": split.hidden[i], "attention_mask": split.mask[i], "labels": split.labels[i], "task": task}
            for i in order.split(size)]


def protect_config(recipe: Recipe, *, steps: int, n_classes: int, seed: int) -> ProtectConfig:
    every = max(1, round(steps * (1 - recipe.eval_from) / max(1, recipe.evals)))
    start = max(1, steps - (recipe.evals - 1) * every)
    cap = recipe.cap_factor * math.log(n_classes) if recipe.cap_factor > 0 else None
    return ProtectConfig(
        mode=recipe.mode, lam=recipe.lam, weight=recipe.weight, lora_r=recipe.lora_r, learning_rate=recipe.trap_lr,
        epochs=10**6, batch_size=recipe.batch_size, early_stopping_patience=10**6, seed=seed, scaled_loss_cap=cap,
        max_steps=steps, selection="trap", lr_schedule="linear", standalone_tolerance=recipe.tolerance,
        tolerance_reference="start", probe_scales=recipe.probe_scales, eval_every=every, eval_start=start,
        project_conflicts=recipe.project_conflicts, cap_per_example=True, exclude=recipe.exclude,
        scale_min=recipe.scale_min, scale_max=recipe.scale_max, min_trap_gain=recipe.min_trap_gain,
        distill=recipe.distill, refit_steps=recipe.refit_steps, refit_lr=recipe.refit_lr,
        refit_every=recipe.refit_every, interference=recipe.interference,
        interference_weight=recipe.interference_weight, lam_control=recipe.lam_control,
        lam_slack=recipe.lam_slack, repair_steps=recipe.repair_steps, repair_lr=recipe.repair_lr,
        proxy_mix=recipe.proxy_mix, proxy_scale=tuple(recipe.proxy_scale),
        proxy_draw=recipe.proxy_draw, retries=recipe.retries)


def model_keyed(clf: Classifier, delta: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """A weight delta keyed like the base's state dict, re-keyed by `clf`'s parameter names as train_protected's
    `proxies` take it (hubguard.protect.proxies.proxy_targets: LoRA, the base weights under the LoRA layers); zero
    deltas left out."""
    from hubguard.protect.proxies import PEFT_PREFIX, proxy_targets

    keys = {n: k.removeprefix("encoder.").removeprefix(PEFT_PREFIX) for n, k in proxy_targets(clf, mode=mode).items()}
    return {n: delta[k] for n, k in keys.items() if k in delta and bool(delta[k].any())}


def train_trap2(setting: Setting, task: str, plain: Trained, *, recipe: Recipe, seed: int,
                proxies: list[dict[str, torch.Tensor]] | None = None) -> Trained:
    """Trap² continuing the plain update for `trap_budget` of its steps; the most protected checkpoint within
    `tolerance` validation points of it at s = 1 is kept. `proxies`: weight deltas of other tasks' updates (keyed
    like the base's state dict) for `recipe.proxy_mix`."""
    clf = copy.deepcopy(plain.model)
    steps = max(6, round(recipe.trap_budget * plain.result.steps))
    cfg = protect_config(recipe, steps=steps, n_classes=len(setting.classes[task]), seed=seed)
    reference = None
    if recipe.mode == "full":
        reference = {f"encoder.{n}": setting.base_state[n] for n in setting.top_names}
    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    res = train_protected(clf, train_batches=_shuffled(setting, task, recipe.batch_size, seed + 1), config=cfg,
                          reference=reference, val_score_fn=lambda m: setting.accuracy(m.encoder, task, "val"),
                          probe_score_fn=lambda m: setting.accuracy(m.encoder, task, "val", limit=recipe.probe_val),
                          proxies=[model_keyed(clf, d, recipe.mode) for d in proxies or []])
    return Trained(state_of(setting, clf, recipe.mode), res, time.process_time() - c0, clf, time.perf_counter() - t0)
