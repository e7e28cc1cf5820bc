"""Settings of Trap² merge protection, with the paper's defaults (Jang, Kim, Koo, Ok; ICML 2026).

One frozen dataclass, `ProtectConfig`, holds every knob; `ProtectConfig.preset(...)` gives the paper's
setting for vision LoRA, vision full fine-tuning and LLM LoRA. `to_dict()` is what the model card and the
`hubguard_protection.json` sidecar record.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from hubguard.errors import ProtectionError

Mode = Literal["lora", "full"]
WeightKind = Literal["inv", "inv_sqrt", "none"]
Selection = Literal["standalone", "trap"]

PROTECTION_METHOD = "trap2"
RETRY_SEED_STEP = 7919  # retry i of a run draws its scales (and proxy coefficients) from seed + i·RETRY_SEED_STEP
PROTECTION_SCHEMA_VERSION = 1

# Attention projection names of common families; the first family whose names occur in a model is used.
DEFAULT_TARGET_MODULE_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # llama, mistral, qwen, gemma
    ("q_proj", "k_proj", "v_proj", "out_proj"),  # CLIP, OPT, BART
    ("query", "key", "value", "attention.output.dense"),  # BERT, RoBERTa
    ("q_lin", "k_lin", "v_lin", "out_lin"),  # DistilBERT
    ("c_attn", "c_proj"),  # GPT-2 (fused QKV)
    ("query_key_value", "dense"),  # GPT-NeoX, BLOOM
)


@dataclass(frozen=True)
class ProtectConfig:
    """Everything that defines a Trap² training run.

    The objective is J = L(W0 + ΔW) − lam · w(s) · L(W0 + s·ΔW), s ~ U[scale_min, scale_max] with
    the open interval `exclude` rejected, one sample per step (`samples_per_step`).
    """

    mode: Mode = "lora"
    lam: float = 0.01
    scale_min: float = 0.05
    scale_max: float = 2.0
    exclude: tuple[float, float] = (0.95, 1.05)
    weight: WeightKind = "inv_sqrt"
    samples_per_step: int = 1
    # Not in the paper: the trap passes see only the first ⌈trap_fraction·B⌉ examples of each batch of B (the
    # standalone pass sees them all). The trap term's gradient stays an unbiased estimate of the same expectation,
    # noisier, and its forward and backward cost that fraction of the batch: what makes Trap² ~2.2x a plain step.
    trap_fraction: float = 1.0
    # Not in the paper: when the trap gradient conflicts with the standalone one, drop its component along the
    # standalone gradient (PCGrad), so no step trades standalone loss for trap at first order.
    project_conflicts: bool = False
    # Ceiling on the maximised loss L(W0 + s·ΔW) (None = uncapped, as in the paper's code). Once a scaled
    # loss reaches it, that term stops pushing, so the update cannot spend itself on making off-scale losses
    # absurdly large (e.g. 2·log(k) for a k-class task: twice the loss of a uniform guess).
    scaled_loss_cap: float | None = None
    # Not in the paper: apply the cap to each example's loss (then average) instead of to the batch mean, with the
    # built-in per-example loss (`objective.per_example_loss`) unless a loss_fn is given. A batch-mean cap stalls
    # once the mean passes it, even with part of the batch still right; per example, only the examples the
    # scaled model already gets wrong stop pushing (benchmarks/protect.py, TUNING).
    cap_per_example: bool = False
    # LoRA (PEFT); alpha = r as in the paper. None = the attention projections q/k/v/o of the model.
    lora_r: int = 16
    lora_alpha: int | None = None
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None
    # Optimisation.
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimiser steps, whatever `epochs` says
    # Learning rate over the run: "constant" (the paper) or "linear" decay to 0 at the last step (max_steps, or
    # epochs x batches); the late steps then move the update little, so the kept checkpoints are less noisy.
    # (train_protected only: the Trainer integration follows TrainingArguments.lr_scheduler_type.)
    lr_schedule: Literal["constant", "linear"] = "constant"
    batch_size: int = 16
    eval_every: int | None = None  # steps between validation passes; None = once per epoch
    # No validation pass before this optimiser step (the starting state is still scored with selection="trap").
    # Continuing an update with Trap², the trap forms late and the early checkpoints are not kept: skipping their
    # validation (each scores 1 + len(probe_scales) models) is most of what protection costs beyond ~2x per step.
    eval_start: int = 0
    early_stopping_patience: int = 2
    # Which validation checkpoint is kept. "standalone" (the paper): the best score at s = 1. "trap": among
    # checkpoints whose s = 1 score is within `standalone_tolerance` of the reference (the best s = 1 score
    # seen, or the starting update's when training continues from one), the one whose scores at
    # `probe_scales` are lowest, i.e. the most protected update that still works as released. Tolerance is
    # in the validation score's units: accuracy points with a score function, nats with the loss.
    selection: Selection = "standalone"
    standalone_tolerance: float = 1.0
    # What the tolerance is measured from: "best" s = 1 score seen (training from the base), or the "start"
    # state's (continuing an update you already trained: the kept update is within tolerance of *it*, not of a
    # lucky validation peak on the way).
    tolerance_reference: Literal["best", "start"] = "best"
    probe_scales: tuple[float, ...] = (0.3, 0.6, 1.5)
    # How a checkpoint's scores at the probe scales become its trap score: "max", the best of them (the attacker
    # picks the coefficient that works best, so an update is as protected as its least trapped scale), or "mean".
    probe_aggregate: Literal["max", "mean"] = "max"
    # selection="trap": stop at the first checkpoint within tolerance whose probe score is at or below this, in the
    # validation score's units (e.g. the base model's accuracy: merges at the probe scales then do no better than
    # the base; with the loss, minus the base's loss). None: train to max_steps / epochs.
    trap_target: float | None = None
    # selection="trap": a checkpoint replaces the starting state only if its trap score is at least this much lower
    # than the start's (validation score units, like standalone_tolerance: accuracy points with a score function,
    # nats with the loss), as well as within tolerance; otherwise the start is kept and the result says so
    # (`selected["protected"]` False, `selected["trap_gain"]`). A small validation set's scores move by a few
    # points from step to step with no trap at all; 0 (the default) takes any lower trap score.
    min_trap_gain: float = 0.0
    # hubguard's designs beyond the paper (hubguard.protect.variants; all off by default):
    distill: float = 0.0  # weight of KL(start update's outputs ‖ outputs) at s = 1 in the standalone term
    refit_steps: int = 0  # sign-gradient steps of a simulated re-fine-tune; the trap is trained at W0 + s(ΔW + δ)
    refit_lr: float = 1e-3  # their step size, in weight units
    refit_every: int = 10  # optimiser steps between two simulations
    interference: float = 0.0  # ‖E‖ / ‖ΔW‖ of the random perturbation of the interference term (0: no term)
    interference_weight: float = 1.0  # its weight, relative to lam
    # Proxy merges (`variants.proxy_shift`; a trap for merges at coefficient 1): with probability `proxy_mix` a step's
    # trap pass is a simulated merge W0 + s·(ΔW + Σ_j c_j·P_j) of the update with the protector's own updates P_j of
    # other, public tasks (`train_protected(proxies=...)`), c_j ~ U[proxy_scale], s ~ U[scale_min, 1] with s = 1
    # included (a merge at coefficient 1 should fail too; alone, s = 1 is the standalone term's). 0 = off.
    proxy_mix: float = 0.0
    proxy_scale: tuple[float, float] = (0.5, 1.5)
    # Which proxies a proxy pass merges: "all" of them, or "one" drawn uniformly (the selection probes them all).
    proxy_draw: Literal["all", "one"] = "all"
    # Realign in the loop (`hubguard.protect.realign_pass`; LoRA): with probability `realign_mix` a step's trap pass is
    # the merge of the *realigned* update, W0 + s·(R(W) − W0 [+ Σ_j c_j·P_j]), R the attacker's realign to the base
    # fitted to the current weights, and the selection's probes also score the realigned merges. 0 = off.
    realign_mix: float = 0.0
    # RegMean in the loop (`hubguard.protect.regmean_pass`; LoRA, with proxies and `train_protected(proxy_batches=)`):
    # with probability `regmean_mix` a step's trap pass is the RegMean merge of the update with the proxies,
    # W0 + s·(ΔW·A_0 + Σ_j P_j·A_j) at an α of `regmean_alphas` (the attacker's choices, AttackerModel.regmean_alphas),
    # the Grams from `regmean_batches` batches per task; the probes also score it at s = 1 for each α. 0 = off.
    regmean_mix: float = 0.0
    regmean_alphas: tuple[float, ...] = (0.5, 0.9, 1.0)
    regmean_batches: int = 16
    regmean_refresh: int = 0  # recompute the protected task's Grams at the current weights every N steps (0: once)
    # Constrained Trap²: λ adapts every step so that the standalone loss stays within `lam_slack` nats of the
    # starting update's on the same batch (its loss in eval mode, without dropout: `variants.TeacherOutputs`): log λ -= lam_control · (EMA of the excess − lam_slack), within
    # [lam / 20, lam · 20]. 0 = the paper's fixed λ.
    lam_control: float = 0.0
    lam_slack: float = 0.0
    # Repair (`hubguard.protect.repair`; selection="trap" only): after the trap phase, when the most protected
    # checkpoint lost more than the tolerance at s = 1, this many standalone-only steps (λ = 0; plus the `distill`
    # KL when set) from it, at `repair_lr` (None: learning_rate), validated every `eval_every` steps and at the end;
    # the repaired states compete in the same selection. 0 = no repair (the paper).
    repair_steps: int = 0
    repair_lr: float | None = None
    # Retries (selection="trap" only): when no checkpoint qualified (the kept update is the starting one,
    # `selected["protected"]` False), train again from the starting state with twice the budget (epochs, max_steps,
    # eval_every and eval_start doubled) and new draws (`retry(i)`), up to this many times. A run that forms no trap
    # on one draw can form it on the next (benchmarks/protect_llm.py --retries, seed 4); each retry costs twice the last.
    retries: int = 0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in ("lora", "full"):
            problems.append(f"mode must be 'lora' or 'full', got {self.mode!r}")
        if self.lam < 0:
            problems.append(f"lam must be >= 0 (0 trains an unprotected update), got {self.lam}")
        if not 0 < self.scale_min < self.scale_max:
            problems.append(f"need 0 < scale_min < scale_max, got {self.scale_min}, {self.scale_max}")
        lo, hi = self.exclude
        if not lo <= 1.0 <= hi:
            problems.append(f"exclude must contain s=1, got {self.exclude}")
        if (hi - lo) >= (self.scale_max - self.scale_min):
            problems.append(f"exclude {self.exclude} leaves nothing of [{self.scale_min}, {self.scale_max}]")
        if self.weight not in ("inv", "inv_sqrt", "none"):
            problems.append(f"weight must be 'inv', 'inv_sqrt' or 'none', got {self.weight!r}")
        if self.scaled_loss_cap is not None and not self.scaled_loss_cap > 0:
            problems.append(f"scaled_loss_cap must be > 0 or None, got {self.scaled_loss_cap}")
        if self.eval_start < 0:
            problems.append(f"eval_start must be >= 0 (a step number), got {self.eval_start}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.lr_schedule not in ("constant", "linear"):
            problems.append(f"lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}")
        if self.selection not in ("standalone", "trap"):
            problems.append(f"selection must be 'standalone' or 'trap', got {self.selection!r}")
        if self.tolerance_reference not in ("best", "start"):
            problems.append(f"tolerance_reference must be 'best' or 'start', got {self.tolerance_reference!r}")
        if self.probe_aggregate not in ("max", "mean"):
            problems.append(f"probe_aggregate must be 'max' or 'mean', got {self.probe_aggregate!r}")
        if self.trap_target is not None and self.selection != "trap":
            problems.append("trap_target stops at a protected checkpoint of selection='trap'; set selection='trap'")
        if not (math.isfinite(self.min_trap_gain) and self.min_trap_gain >= 0):
            problems.append(f"min_trap_gain must be a finite number >= 0 (0: any gain), got {self.min_trap_gain}")
        elif self.min_trap_gain > 0 and self.selection != "trap":
            problems.append("min_trap_gain is a rule of selection='trap' (the kept checkpoint's gain over the start); "
                            "set selection='trap' or min_trap_gain=0")
        if self.standalone_tolerance < 0:
            problems.append(f"standalone_tolerance must be >= 0, got {self.standalone_tolerance}")
        if not self.probe_scales or any(x < 0 or abs(x - 1.0) < 1e-9 for x in self.probe_scales):
            problems.append(f"probe_scales must be non-empty, >= 0 and exclude 1, got {self.probe_scales}")
        if (self.distill < 0 or self.refit_steps < 0 or self.interference < 0 or self.interference_weight < 0
                or self.lam_control < 0):
            problems.append("distill, refit_steps, interference, interference_weight and lam_control must be >= 0")
        scale_ok = (isinstance(self.proxy_scale, tuple) and len(self.proxy_scale) == 2
                    and 0 <= self.proxy_scale[0] <= self.proxy_scale[1])
        if not 0 <= self.proxy_mix <= 1 or not scale_ok:
            problems.append(f"proxy_mix must be in [0, 1] and proxy_scale (lo, hi) with 0 <= lo <= hi, got "
                            f"{self.proxy_mix}, {self.proxy_scale}")
        if not 0 <= self.realign_mix <= 1:
            problems.append(f"realign_mix must be in [0, 1], got {self.realign_mix}")
        elif self.realign_mix and self.mode != "lora":
            problems.append("realign_mix is implemented for mode='lora' only; set realign_mix=0 for full fine-tuning")
        problems += self._regmean_problems()
        if self.proxy_draw not in ("all", "one"):
            problems.append(f"proxy_draw must be 'all' or 'one', got {self.proxy_draw!r}")
        if self.refit_steps and (not self.refit_lr > 0 or self.refit_every < 1):
            problems.append(f"refit_steps needs refit_lr > 0 and refit_every >= 1, got {self.refit_lr}, {self.refit_every}")
        if self.repair_steps < 0 or (self.repair_lr is not None and not self.repair_lr > 0):
            problems.append(f"repair_steps must be >= 0 and repair_lr > 0 or None, got {self.repair_steps}, "
                            f"{self.repair_lr}")
        elif self.repair_steps and self.selection != "trap":
            problems.append("repair_steps repairs a checkpoint of selection='trap'; set selection='trap' or "
                            "repair_steps=0")
        if not 0 <= self.retries <= 4:
            problems.append(f"retries must be 0 to 4 (each retry doubles the budget), got {self.retries}")
        elif self.retries and self.selection != "trap":
            problems.append("retries train again when selection='trap' kept the starting update; set "
                            "selection='trap' or retries=0")
        if self.samples_per_step < 1:
            problems.append("samples_per_step must be >= 1")
        if not 0 < self.trap_fraction <= 1:
            problems.append(f"trap_fraction must be in (0, 1] (1: the whole batch), got {self.trap_fraction}")
        if self.lora_r < 1:
            problems.append(f"lora_r must be >= 1, got {self.lora_r}")
        if self.max_grad_norm <= 0 or self.learning_rate <= 0 or self.epochs < 1 or self.batch_size < 1:
            problems.append("max_grad_norm and learning_rate must be > 0; epochs and batch_size >= 1")
        if problems:
            raise ProtectionError(
                "Invalid protection settings: " + "; ".join(problems) + ". Fix the values and retry."
            )

    def _regmean_problems(self) -> list[str]:
        """What is wrong with the `regmean_mix` settings (empty when nothing)."""
        alphas_ok = (isinstance(self.regmean_alphas, tuple) and len(self.regmean_alphas) > 0
                     and all(0 <= a <= 1 for a in self.regmean_alphas))
        if not 0 <= self.regmean_mix <= 1 or not alphas_ok or self.regmean_batches < 1 or self.regmean_refresh < 0:
            return [f"regmean_mix must be in [0, 1], regmean_alphas values in [0, 1], regmean_batches >= 1 and "
                    f"regmean_refresh >= 0, got {self.regmean_mix}, {self.regmean_alphas}, {self.regmean_batches}, "
                    f"{self.regmean_refresh}"]
        if not self.regmean_mix:
            return []
        if self.mode != "lora":
            return ["regmean_mix is implemented for mode='lora' only; set regmean_mix=0 for full fine-tuning"]
        if self.realign_mix or self.refit_steps:
            return ["regmean_mix cannot be combined with realign_mix or refit_steps (a pass is one merge); set "
                    "the others to 0"]
        return []

    @property
    def effective_lora_alpha(self) -> int:
        return self.lora_r if self.lora_alpha is None else self.lora_alpha

    @property
    def protected(self) -> bool:
        return self.lam > 0

    def replace(self, **changes: Any) -> ProtectConfig:
        return dataclasses.replace(self, **changes)

    def retry(self, attempt: int) -> ProtectConfig:
        """The settings of retry `attempt` (1 = the first retry): 2^attempt times the budget and the validation
        spacing, draws from seed + attempt·RETRY_SEED_STEP, no further retries of its own."""
        if not 1 <= attempt <= self.retries:
            raise ProtectionError(f"retry {attempt} is outside 1..retries={self.retries}")
        factor = 2**attempt
        return self.replace(
            seed=self.seed + attempt * RETRY_SEED_STEP, epochs=self.epochs * factor, retries=0,
            max_steps=None if self.max_steps is None else self.max_steps * factor,
            eval_every=None if self.eval_every is None else self.eval_every * factor,
            eval_start=self.eval_start * factor,
        )

    @classmethod
    def preset(cls, setting: str, **overrides: Any) -> ProtectConfig:
        """The paper's settings: 'vision-lora', 'vision-full', 'llm' (LoRA r=32, 1/√s)."""
        presets: dict[str, dict[str, Any]] = {
            "vision-lora": {"mode": "lora", "lam": 0.001, "weight": "inv", "lora_r": 16},
            "vision-full": {"mode": "full", "lam": 0.005, "weight": "inv"},
            "llm": {"mode": "lora", "lam": 0.01, "weight": "inv_sqrt", "lora_r": 32},
        }
        if setting not in presets:
            raise ProtectionError(
                f"Unknown protection preset {setting!r}: the paper defines {sorted(presets)}. Pick one of them."
            )
        return cls(**{**presets[setting], **overrides})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["exclude"] = list(self.exclude)
        data["probe_scales"] = list(self.probe_scales)
        data["proxy_scale"] = list(self.proxy_scale)
        data["regmean_alphas"] = list(self.regmean_alphas)
        data["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        data["lora_alpha"] = self.effective_lora_alpha
        return {"method": PROTECTION_METHOD, "schema_version": PROTECTION_SCHEMA_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProtectConfig:
        """Read back `to_dict()` output; unknown fields are ignored (newer writers)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("exclude", "probe_scales", "proxy_scale", "regmean_alphas"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if kwargs.get("target_modules") is not None:
            kwargs["target_modules"] = tuple(kwargs["target_modules"])
        return cls(**kwargs)
