"""Training with the Trap² objective in a plain loop: `train_protected(model, train_batches=..., config=...)`.

AdamW, grad-norm clip, validation at s = 1 with early stopping (the best state is restored) or the trap selection
(`hubguard.protect.selection`), `lam = 0` trains plainly. Also here, re-exported: `attach_lora` (PEFT LoRA on the
attention projections, `hubguard.protect.lora`) and the `transformers.Trainer` integration
(`Trap2Trainer` / `make_trap2_trainer`, `hubguard.protect.hf_trainer`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError
from hubguard.protect.config import ProtectConfig
from hubguard.protect.hf_trainer import make_trap2_trainer, trap2_trainer_class
from hubguard.protect.lora import attach_lora, resolve_target_modules
from hubguard.protect.objective import (
    LossFn,
    backward_projected,
    snapshot_reference,
    trap2_loss,
)
from hubguard.protect.realign_pass import realign_pass_for
from hubguard.protect.regmean_pass import regmean_pass_for
from hubguard.protect.selection import Candidate, TrapSelector
from hubguard.protect.validation import Score, Validation, evaluate_loss
from hubguard.protect.variant_state import VariantState
from hubguard.protect.variants import check_proxies
from hubguard.utils import get_logger, progress

if TYPE_CHECKING:
    import torch

    from hubguard.protect.variants import TeacherOutputs

logger = get_logger(__name__)

@dataclass(frozen=True)
class ProtectResult:
    """What a protected (or plain) training run did.

    `selected` describes the kept checkpoint: its step, its validation score at s = 1 (`standalone`) and,
    with `selection="trap"`, its score at the probe scales (`trap`, aggregated by `config.probe_aggregate`),
    the s = 1 reference it had to stay within tolerance of, `trap_gain` (how much lower its trap score is than the
    starting state's) and `min_trap_gain`, `protected` (False when the starting update itself was kept: no Trap²
    checkpoint stayed within tolerance of it with a trap gain of at least `config.min_trap_gain`; a warning
    says which) and, with `config.trap_target`, `target_reached`. Scores are "higher is better" (the negative loss when no score
    function).
    """

    steps: int
    epochs_run: float
    best_val_loss: float | None
    stopped_early: bool
    seconds: float
    history: tuple[dict[str, float | None], ...]  # val_standalone None: not scored (min_trap_gain)
    selected: dict[str, Any] | None = None
    # With config.retries: one record per attempt ({"attempt", "seed", "max_steps", "epochs", "steps", "seconds",
    # "protected", "selected"}); `steps`, `history` and `selected` are then the last attempt's, and `seconds` is
    # every attempt's together.
    attempts: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "epochs_run": self.epochs_run,
            "best_val_loss": self.best_val_loss,
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
            "selected": self.selected,
            "attempts": [dict(a) for a in self.attempts],
        }


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ProtectionError("The model has no trainable parameters; attach LoRA or unfreeze the weights to train.")
    return params


def _check_run(*, config: ProtectConfig, n_batches: int | None, validation: Validation) -> None:
    if n_batches == 0:
        raise ProtectionError("The training data is empty: there is nothing to fine-tune on. Pass at least one batch.")
    if config.lr_schedule != "constant" and not (config.max_steps or n_batches):
        raise ProtectionError(
            f"lr_schedule={config.lr_schedule!r} needs the run's length: set max_steps, or pass training batches "
            "with a len() (a list or a DataLoader)."
        )
    trap_selection = config.selection == "trap"
    if validation.probe_score_fn is not None and not trap_selection:
        raise ProtectionError("probe_score_fn scores the probe scales of selection='trap'; set selection='trap' "
                              "or drop probe_score_fn.")
    if trap_selection and not validation.available:
        raise ProtectionError(
            "selection='trap' picks the checkpoint on validation data: pass val_batches or val_score_fn "
            "(or use selection='standalone')."
        )


class _Keeper:
    """What the run keeps: the trap selection's Pareto front, or the best s = 1 state (the paper), and when to stop."""

    def __init__(self, model: torch.nn.Module, *, config: ProtectConfig, validation: Validation) -> None:
        self.model, self.config, self.validation = model, config, validation
        self.names = {n for n, p in model.named_parameters() if p.requires_grad}
        self.selector = (TrapSelector(config.standalone_tolerance, from_start=config.tolerance_reference == "start",
                                      min_gain=config.min_trap_gain) if config.selection == "trap" else None)
        self.best = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evals = 0
        self.reached = False  # a checkpoint within tolerance met config.trap_target
        self.stopped = False  # early stopping fired (or trap_target reached)

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if n in self.names}

    def _meets_target(self, trap: float) -> bool:
        return self.config.trap_target is not None and trap <= self.config.trap_target

    def start(self) -> None:
        """The starting point is a candidate too (it matters when continuing an update)."""
        if self.selector is not None:
            at_one, trap = self.validation.with_probes()
            self.selector.add(Candidate(0, at_one, trap, self.snapshot()))
            self.reached = self.stopped = self._meets_target(trap)  # already protected enough

    def validate(self, step: int, record: dict[str, float | None]) -> None:
        """A validation pass at `step`: record it, update the kept state and the stopping state."""
        if self.selector is not None:
            trap = self.validation.probes()
            record["val_trap"] = trap
            if self.selector.out_of_running(trap):  # its s = 1 pass (most of a validation's cost) is skipped
                record["val_standalone"] = None  # not scored: it gains too little to be kept, whatever it scores
                self.selector.note_too_little_gain()
                return
            at_one = self.validation.at_one()
            record["val_standalone"] = at_one
            cand = Candidate(step, at_one, trap, self.snapshot())
            works = self.selector.add(cand)
            self.bad_evals = 0 if works else self.bad_evals + 1
            self.reached = self.reached or (works and self.selector.gains_enough(cand) and self._meets_target(trap))
            self.stopped = self.bad_evals >= self.config.early_stopping_patience or self.reached
        elif self.validation.available:
            val = -self.validation.at_one()
            record["val"] = val
            if val < self.best - 1e-6:
                self.best, self.bad_evals = val, 0
                self.best_state = self.snapshot()
            else:
                self.bad_evals += 1
                self.stopped = self.bad_evals >= self.config.early_stopping_patience

    def finish(self, history: list[dict[str, float]], steps: int) -> dict[str, Any] | None:
        """Restore the kept state into the model; describe it (ProtectResult.selected)."""
        selected: dict[str, Any] | None = None
        state = self.best_state
        if self.selector is not None:
            chosen = self.selector.best()
            if chosen is not None:
                state = chosen.state
                selected = self._describe(chosen)
        elif state is not None:
            selected = {"step": min((r["step"] for r in history if r.get("val") == self.best), default=steps),
                        "standalone": -self.best}
        if state is not None:
            self.load(state)
        return selected

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a kept state (`snapshot()`'s tensors) back into the model."""
        _restore(self.model, state)

    def _describe(self, chosen: Candidate) -> dict[str, Any]:
        assert self.selector is not None
        # Step 0 is the state the run started from: no Trap² checkpoint qualified (within tolerance and, with
        # min_trap_gain, enough more protected). Unless the start already met trap_target: then it was protected.
        trap_kept = chosen.step != 0 or self.reached
        selected = {**self.selector.describe(chosen), "protected": trap_kept}
        if self.config.trap_target is not None:
            selected["target_reached"] = self.reached
        if not trap_kept:
            logger.warning(
                "%s: the kept update is the starting one, NOT protected. Raise standalone_tolerance, lower "
                "min_trap_gain, lam or the learning rate, or validate on more data (fewer examples make the "
                "scores noisier).", self.selector.why_start(),
            )
        return selected


def train_protected(
    model: torch.nn.Module,
    *,
    train_batches: Iterable[Any],
    config: ProtectConfig,
    val_batches: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    val_score_fn: Score | None = None,
    probe_score_fn: Score | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    proxies: Sequence[Mapping[str, torch.Tensor]] = (),
    proxy_batches: Sequence[Iterable[Any]] = (),
) -> ProtectResult:
    """Train `model` in place with the Trap² objective (plain training when `config.lam == 0`).

    `train_batches` must be re-iterable (a list or a DataLoader); each batch is a dict of model kwargs or
    one positional input. Validation runs at s = 1 every `config.eval_every` steps (default: each epoch):
    by `val_score_fn(model)` (higher is better) if given, else by the loss on `val_batches`; none before step
    `config.eval_start`, and always at the last step.

    `config.selection="standalone"` (the paper): the best s = 1 state is restored; training stops after
    `early_stopping_patience` evaluations without improvement. `config.selection="trap"`: validation also
    scores W0 + s·ΔW at `config.probe_scales` (their best score, or their mean: `config.probe_aggregate`),
    and the kept state is the most protected one whose s = 1 score is within `config.standalone_tolerance`
    of the reference: the best s = 1 score seen (`tolerance_reference="best"`; the starting state counts),
    or the starting state's ("start", for continuing an update you already trained); training stops after
    `early_stopping_patience` evaluations in a row outside the tolerance, or at the first checkpoint within
    it that meets `config.trap_target`. `probe_score_fn` scores the probe scales instead of `val_score_fn`
    (e.g. on a subset of the validation data: the probes only rank how protected checkpoints are, while the
    s = 1 score decides the tolerance, so it is the one that needs every example).

    To protect an update you already trained, load it trainable (`PeftModel.from_pretrained(base, path,
    is_trainable=True)`, or the fine-tuned model with `reference` = the base's parameters for full mode)
    and call this with `selection="trap"`.

    `proxies` (`config.proxy_mix`): other updates of the base to trap merges with, `hubguard.protect.variants`;
    `proxy_batches` (`config.regmean_mix`): batches of each proxy's task, whose layer inputs weigh it in RegMean.

    `config.retries` (selection="trap"): when an attempt keeps the starting state (`selected["protected"]` False),
    the model is reset to it and trained again with `config.retry(i)` (twice the budget, new draws), up to
    `config.retries` times; `ProtectResult.attempts` records each.
    """
    inputs = _RunInputs(train_batches=train_batches, val_batches=val_batches, loss_fn=loss_fn,
                        val_score_fn=val_score_fn, probe_score_fn=probe_score_fn, reference=reference,
                        on_step=on_step, proxies=proxies, proxy_batches=proxy_batches)
    if not config.retries:
        return _train_attempt(model, inputs, config=config, optimizer=optimizer)
    if optimizer is not None:
        raise ProtectionError("config.retries restarts each attempt with a fresh AdamW, so it cannot take your "
                              "optimizer: drop optimizer= or set retries=0.")
    start = snapshot_reference(model)  # what a retry resets
    attempts: list[dict[str, Any]] = []
    seconds = 0.0
    for attempt in range(config.retries + 1):
        cfg = config.retry(attempt) if attempt else config
        if attempt:
            _restore(model, start)
            logger.warning("trap2: attempt %d formed no trap; retry %d/%d with %s steps", attempt, attempt,
                           config.retries, cfg.max_steps or f"{cfg.epochs} epochs of")
        result = _train_attempt(model, inputs, config=cfg)
        seconds += result.seconds
        protected = bool((result.selected or {}).get("protected"))
        attempts.append({"attempt": attempt + 1, "seed": cfg.seed, "max_steps": cfg.max_steps, "epochs": cfg.epochs,
                         "steps": result.steps, "seconds": result.seconds, "protected": protected,
                         "selected": result.selected})
        if protected:
            break
    return dataclasses.replace(result, seconds=seconds, attempts=tuple(attempts))


def _restore(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` (trainable parameters by name) back into `model`."""
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


@dataclass(frozen=True)
class _RunInputs:
    """What `train_protected` was given besides the model, the settings and the optimiser: every attempt's."""

    train_batches: Iterable[Any]
    val_batches: Iterable[Any] | None
    loss_fn: LossFn | None
    val_score_fn: Score | None
    probe_score_fn: Score | None
    reference: Mapping[str, torch.Tensor] | None
    on_step: Callable[[int, dict[str, float]], None] | None
    proxies: Sequence[Mapping[str, torch.Tensor]]
    proxy_batches: Sequence[Iterable[Any]] = ()


def _train_attempt(model: torch.nn.Module, inputs: _RunInputs, *, config: ProtectConfig,
                   optimizer: torch.optim.Optimizer | None = None) -> ProtectResult:
    """One Trap² (or plain) run of `train_protected`, from the model as it stands."""
    train_batches, loss_fn, on_step, reference = inputs.train_batches, inputs.loss_fn, inputs.on_step, inputs.reference
    n_batches = _length(train_batches)
    if config.mode == "full" and reference is None:
        reference = snapshot_reference(model)
    proxies = check_proxies(model, inputs.proxies, config=config)
    validation = Validation(model, config=config, val_batches=inputs.val_batches, loss_fn=loss_fn,
                            val_score_fn=inputs.val_score_fn, probe_score_fn=inputs.probe_score_fn,
                            reference=reference, proxies=proxies if config.proxy_mix > 0 else (),
                            realign=realign_pass_for(model, config=config),
                            regmean=regmean_pass_for(model, config=config, train_batches=train_batches,
                                                     proxies=proxies, proxy_batches=inputs.proxy_batches))
    _check_run(config=config, n_batches=n_batches, validation=validation)
    params, optimizer, scheduler, generator = _optimisation(model, config=config, optimizer=optimizer, n_batches=n_batches)
    keeper = _Keeper(model, config=config, validation=validation)
    start = time.perf_counter()  # validating the starting state is part of the run's cost
    keeper.start()
    variants = VariantState(model, train_batches, config=config, loss_fn=loss_fn, reference=reference,
                         teacher=keeper.snapshot() if config.distill > 0 or config.lam_control > 0 else None,
                         proxies=validation.proxies, realign=validation.realign, regmean=validation.regmean)
    steps, epoch, history, done = 0, 0, [], keeper.stopped
    model.train()
    while not done and epoch < config.epochs:
        for batch in progress(train_batches, desc=f"trap2 epoch {epoch + 1}/{config.epochs}", total=n_batches):
            record = _step(model, batch, config=config, params=params, optimizer=optimizer, scheduler=scheduler,
                           generator=generator, reference=reference, loss_fn=loss_fn, step=steps,
                           teacher=variants.teacher, shift=variants.shift(steps), variants=variants)
            steps += 1
            if on_step is not None:
                on_step(steps, record)
            if _validation_due(config=config, steps=steps, n_batches=n_batches):
                keeper.validate(steps, record)
            history.append(record)
            done = keeper.stopped or (config.max_steps is not None and steps >= config.max_steps)
            if done:
                break
        epoch += 1
    repaired = _repair(model, keeper=keeper, batches=train_batches, config=config, params=params, first_step=steps,
                       generator=generator, reference=reference, loss_fn=loss_fn, teacher=variants.teacher)
    history, steps = history + repaired, steps + len(repaired)
    selected = keeper.finish(history, steps)
    model.eval()
    seconds = time.perf_counter() - start
    logger.info("trap2 training: %d steps in %.1fs (lam=%s, selected %s)", steps, seconds, config.lam, selected)
    return ProtectResult(steps=steps, epochs_run=steps / n_batches if n_batches else float(epoch),
                         best_val_loss=None if keeper.best == math.inf else keeper.best, stopped_early=keeper.stopped,
                         seconds=seconds, history=tuple(history), selected=selected)


def _optimisation(model: torch.nn.Module, *, config: ProtectConfig, optimizer: torch.optim.Optimizer | None,
                  n_batches: int | None) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer, Any, torch.Generator]:
    """The trainable parameters, the optimiser (AdamW unless given), its schedule and the run's generator."""
    import torch

    params = _trainable(model)
    optimizer = optimizer or torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return params, optimizer, _lr_scheduler(optimizer, config=config, n_batches=n_batches), torch.Generator().manual_seed(
        config.seed)


def _repair(model: torch.nn.Module, *, keeper: _Keeper, config: ProtectConfig, **kwargs: Any) -> list[dict[str, Any]]:
    """`hubguard.protect.repair` after the trap phase (`config.repair_steps`): the records of its steps, or none."""
    if not config.repair_steps:
        return []
    from hubguard.protect.repair import repair

    return repair(model, keeper=keeper, config=config, step_fn=_step, **kwargs)


def _length(batches: Iterable[Any]) -> int | None:
    """How many batches an epoch has (None for an iterable without a length)."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def _validation_due(*, config: ProtectConfig, steps: int, n_batches: int | None) -> bool:
    """Whether to validate after `steps` steps: every `config.eval_every` steps (default: each epoch) from
    `config.eval_start` on, and always at the last step (with eval_every, it need not fall on a multiple)."""
    last = (config.max_steps is not None and steps >= config.max_steps) or (
        n_batches is not None and steps == config.epochs * n_batches)
    end_of_epoch = n_batches is not None and steps % n_batches == 0
    due = last or (steps % config.eval_every == 0 if config.eval_every else end_of_epoch)
    return due and steps >= config.eval_start


def _step(model: torch.nn.Module, batch: Any, *, config: ProtectConfig, params: list[torch.nn.Parameter],
          optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
          reference: Mapping[str, torch.Tensor] | None, loss_fn: LossFn | None, step: int,
          teacher: TeacherOutputs | None = None,
          shift: Mapping[str, torch.Tensor] | None = None, variants: VariantState | None = None) -> dict[str, float]:
    """One optimiser step on the Trap² objective; returns the step's record (losses, scale, λ)."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    lam = variants.lam if variants is not None else None
    proxy = variants.proxy(generator) if variants is not None else None
    if variants is not None:
        variants.refresh(step)
    merge_pass = variants.merge_pass(generator) if variants is not None else None
    out = trap2_loss(model, batch, config=config, generator=generator, reference=reference, loss_fn=loss_fn,
                     teacher=teacher, shift=shift, lam=lam, proxy=proxy, merge_pass=merge_pass)
    if variants is not None:
        variants.control(out)
    if not torch.isfinite(out.loss):
        raise ProtectionError(
            f"The Trap² loss became {float(out.loss)} at step {step} (s={out.scale:.3f}). "
            "Lower lam or the learning rate."
        )
    if config.project_conflicts:
        backward_projected(out, params)
    else:
        out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    record = {"step": step + 1, "loss": float(out.loss.detach()), "standalone": out.standalone_loss,
              "scaled": out.scaled_loss, "scale": out.scale, "lam": config.lam if lam is None else lam}
    if config.realign_mix or config.regmean_mix:
        record["realigned" if config.realign_mix else "regmean"] = float(merge_pass is not None)
    return record if not config.proxy_mix else {**record, "proxy": float(proxy is not None)}


def _lr_scheduler(optimizer: torch.optim.Optimizer, *, config: ProtectConfig, n_batches: int | None) -> Any:
    """The `config.lr_schedule` scheduler (None for "constant"): linear decay to 0 at the run's last step."""
    import torch

    if config.lr_schedule == "constant":
        return None
    total = config.max_steps or config.epochs * (n_batches or 1)  # train_protected checked that one is known
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))


__all__ = ["ProtectResult", "attach_lora", "evaluate_loss", "make_trap2_trainer", "resolve_target_modules",
           "train_protected", "trap2_trainer_class"]
