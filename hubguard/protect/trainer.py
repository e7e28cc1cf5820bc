"""Training with the Trap² objective: a plain loop for custom code, and a transformers `Trainer` subclass.

- `attach_lora(model, config=...)` wraps a model with PEFT LoRA on its attention projections (r, alpha=r).
- `train_protected(model, train_batches=..., config=...)` is the custom-loop entry point: AdamW, grad-norm
  clip, validation at s = 1 with early stopping (the best state is restored), `lam = 0` trains plainly.
- `Trap2Trainer` / `make_trap2_trainer(...)` plug the same objective into `transformers.Trainer`, with
  evaluation at s = 1, `EarlyStoppingCallback` and `load_best_model_at_end`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubguard.errors import MissingDependencyError, ProtectionError
from hubguard.protect.config import DEFAULT_TARGET_MODULE_FAMILIES, ProtectConfig
from hubguard.protect.objective import (
    LossFn,
    backward_projected,
    default_loss,
    mean_loss,
    snapshot_reference,
    trap2_loss,
)
from hubguard.utils import get_logger, progress

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)


@dataclass(frozen=True)
class ProtectResult:
    """What a protected (or plain) training run did.

    `selected` describes the kept checkpoint: its step, its validation score at s = 1 (`standalone`) and,
    with `selection="trap"`, its score at the probe scales (`trap`, aggregated by `config.probe_aggregate`),
    the s = 1 reference it had to stay within tolerance of, `protected` (False when the starting update itself
    was kept: no Trap² checkpoint stayed within tolerance of it; a warning is logged) and, with
    `config.trap_target`, `target_reached`. Scores are "higher is better" (the negative loss when no score
    function).
    """

    steps: int
    epochs_run: float
    best_val_loss: float | None
    stopped_early: bool
    seconds: float
    history: tuple[dict[str, float], ...]
    selected: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "epochs_run": self.epochs_run,
            "best_val_loss": self.best_val_loss,
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
            "selected": self.selected,
        }


@dataclass
class _Candidate:
    step: int
    standalone: float  # validation score at s = 1 (higher is better)
    trap: float  # mean validation score at the probe scales (lower is more protected)
    state: dict[str, Any]


class _TrapSelector:
    """Keeps the Pareto front of (standalone high, trap low) checkpoints; picks the most protected one whose
    standalone score is within `tolerance` of the reference: the best standalone score seen, or with
    `from_start` the first candidate's (the starting state)."""

    def __init__(self, tolerance: float, *, from_start: bool = False) -> None:
        self.tolerance = tolerance
        self.from_start = from_start
        self.reference = -math.inf
        self.front: list[_Candidate] = []

    def add(self, cand: _Candidate) -> bool:
        """Record `cand`; True when it is within tolerance of the reference (the update still works)."""
        if not self.from_start or self.reference == -math.inf:  # "start": the first candidate fixes it
            self.reference = max(self.reference, cand.standalone)
        if not any(c.standalone >= cand.standalone and c.trap <= cand.trap for c in self.front):
            self.front = [c for c in self.front if not (cand.standalone >= c.standalone and cand.trap <= c.trap)]
            self.front.append(cand)
        return cand.standalone >= self.reference - self.tolerance

    def best(self) -> _Candidate | None:
        ok = [c for c in self.front if c.standalone >= self.reference - self.tolerance]
        return min(ok, key=lambda c: (c.trap, -c.standalone)) if ok else None


def resolve_target_modules(model: torch.nn.Module, *, config: ProtectConfig) -> list[str]:
    """The modules LoRA wraps: `config.target_modules`, else the first q/k/v/o family found in the model."""
    names = [n for n, _ in model.named_modules()]
    if config.target_modules is not None:
        wanted = list(config.target_modules)
        absent = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
        if absent:
            raise ProtectionError(
                f"LoRA target modules {absent} do not occur in the model. Pass names that match its modules "
                f"(e.g. {sorted({n.rsplit('.', 1)[-1] for n in names if n})[:12]})."
            )
        return wanted
    for family in DEFAULT_TARGET_MODULE_FAMILIES:
        if all(any(n == t or n.endswith("." + t) for n in names) for t in family):
            return list(family)
    raise ProtectionError(
        "Could not find the attention projections (q/k/v/o) of this model to attach LoRA. "
        "Pass target_modules=(...) in ProtectConfig."
    )


def attach_lora(model: torch.nn.Module, *, config: ProtectConfig, task_type: str | None = None) -> Any:
    """Wrap `model` with a fresh PEFT LoRA adapter configured as in the paper (alpha = r, no bias)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - peft is installed with the protect extra
        raise MissingDependencyError.for_extra(package="peft", extra="protect", purpose="LoRA protection") from exc
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.effective_lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=resolve_target_modules(model, config=config),
        bias="none",
        task_type=task_type,
    )
    return get_peft_model(model, lora)


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ProtectionError("The model has no trainable parameters; attach LoRA or unfreeze the weights to train.")
    return params


def evaluate_loss(model: torch.nn.Module, batches: Iterable[Any], *, loss_fn: LossFn | None = None) -> float:
    """Mean loss over `batches` at s = 1, in eval mode, without gradients."""
    import torch

    from hubguard.protect.objective import _call

    loss_fn = loss_fn or default_loss
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            total += float(mean_loss(loss_fn(_call(model, batch, None), batch)))
            count += 1
    model.train(was_training)
    if count == 0:
        raise ProtectionError("The validation data is empty; pass at least one batch or val_batches=None.")
    return total / count


def train_protected(
    model: torch.nn.Module,
    *,
    train_batches: Iterable[Any],
    config: ProtectConfig,
    val_batches: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    val_score_fn: Callable[[torch.nn.Module], float] | None = None,
    probe_score_fn: Callable[[torch.nn.Module], float] | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
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
    """
    import torch

    from hubguard.protect.objective import scaled_in_place

    batches = train_batches
    try:
        n_batches = len(batches)  # type: ignore[arg-type]
    except TypeError:
        n_batches = None
    if n_batches == 0:
        raise ProtectionError("The training data is empty: there is nothing to fine-tune on. Pass at least one batch.")
    if config.lr_schedule != "constant" and not (config.max_steps or n_batches):
        raise ProtectionError(
            f"lr_schedule={config.lr_schedule!r} needs the run's length: set max_steps, or pass training batches "
            "with a len() (a list or a DataLoader)."
        )
    trap_selection = config.selection == "trap"
    if probe_score_fn is not None and not trap_selection:
        raise ProtectionError("probe_score_fn scores the probe scales of selection='trap'; set selection='trap' "
                              "or drop probe_score_fn.")
    if trap_selection and val_batches is None and val_score_fn is None:
        raise ProtectionError(
            "selection='trap' picks the checkpoint on validation data: pass val_batches or val_score_fn "
            "(or use selection='standalone')."
        )
    if config.mode == "full" and reference is None:
        reference = snapshot_reference(model)
    params = _trainable(model)
    optimizer = optimizer or torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _lr_scheduler(optimizer, config=config, n_batches=n_batches)
    generator = torch.Generator().manual_seed(config.seed)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}

    def score() -> float:
        """Validation score of the model as it stands (higher is better)."""
        if val_score_fn is not None:
            return float(val_score_fn(model))
        return -evaluate_loss(model, val_batches, loss_fn=loss_fn)  # type: ignore[arg-type]

    def probe_score() -> float:
        return float(probe_score_fn(model)) if probe_score_fn is not None else score()

    def meets_target(trap: float) -> bool:
        return config.trap_target is not None and trap <= config.trap_target

    def scores() -> tuple[float, float]:
        """(score at s = 1, mean score at the probe scales), in eval mode, without gradients."""
        was = model.training
        model.eval()
        with torch.no_grad():
            at_one = score()
            probes = []
            for s in config.probe_scales:
                with scaled_in_place(model, scale=s, mode=config.mode, reference=reference):
                    probes.append(probe_score())
        model.train(was)
        return at_one, max(probes) if config.probe_aggregate == "max" else sum(probes) / len(probes)

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable_names}

    def validate() -> float | None:
        """Validation at s = 1 for the paper's selection, as a loss-like number (lower is better)."""
        if val_score_fn is None and val_batches is None:
            return None
        was = model.training
        model.eval()
        with torch.no_grad():
            value = -score()
        model.train(was)
        return value

    selector = (_TrapSelector(config.standalone_tolerance, from_start=config.tolerance_reference == "start")
                if trap_selection else None)
    start = time.perf_counter()  # validating the starting state is part of the run's cost
    reached = False  # a checkpoint within tolerance met config.trap_target
    if selector is not None:  # the starting point is a candidate too (it matters when continuing an update)
        at_one, trap = scores()
        selector.add(_Candidate(0, at_one, trap, snapshot()))
        reached = meets_target(trap)  # already protected enough
    best = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals = 0
    steps = 0
    stopped = reached  # early stopping fired (or trap_target reached)
    done = reached  # early stopping, trap_target or max_steps
    history: list[dict[str, float]] = []
    model.train()
    for epoch in range(config.epochs):
        if done:
            break
        for batch in progress(batches, desc=f"trap2 epoch {epoch + 1}/{config.epochs}", total=n_batches):
            optimizer.zero_grad(set_to_none=True)
            out = trap2_loss(model, batch, config=config, generator=generator, reference=reference, loss_fn=loss_fn)
            if not torch.isfinite(out.loss):
                raise ProtectionError(
                    f"The Trap² loss became {float(out.loss)} at step {steps} (s={out.scale:.3f}). "
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
            steps += 1
            record = {"step": steps, "loss": float(out.loss.detach()), "standalone": out.standalone_loss,
                      "scaled": out.scaled_loss, "scale": out.scale}
            if on_step is not None:
                on_step(steps, record)
            end_of_epoch = n_batches is not None and steps % n_batches == 0
            last = (config.max_steps is not None and steps >= config.max_steps) or (
                n_batches is not None and steps == config.epochs * n_batches)
            # The last state is always validated (with eval_every, it need not fall on a multiple).
            due = last or (steps % config.eval_every == 0 if config.eval_every else end_of_epoch)
            if due and steps >= config.eval_start:
                if selector is not None:
                    at_one, trap = scores()
                    record["val_standalone"], record["val_trap"] = at_one, trap
                    works = selector.add(_Candidate(steps, at_one, trap, snapshot()))
                    bad_evals = 0 if works else bad_evals + 1
                    reached = reached or (works and meets_target(trap))
                    stopped = bad_evals >= config.early_stopping_patience or reached
                else:
                    val = validate()
                    if val is not None:
                        record["val"] = val
                        if val < best - 1e-6:
                            best, bad_evals = val, 0
                            best_state = snapshot()
                        else:
                            bad_evals += 1
                            stopped = bad_evals >= config.early_stopping_patience
            history.append(record)
            done = stopped or (config.max_steps is not None and steps >= config.max_steps)
            if done:
                break
        if done:
            break
    selected: dict[str, float] | None = None
    if selector is not None:
        chosen = selector.best()
        if chosen is not None:
            best_state = chosen.state
            # With "start", step 0 is the update you gave: no Trap² checkpoint stayed within tolerance of it.
            # (Unless the start already met trap_target: then it was protected before training.)
            trap_kept = not (config.tolerance_reference == "start" and chosen.step == 0) or reached
            selected = {"step": chosen.step, "standalone": chosen.standalone, "trap": chosen.trap,
                        "reference": selector.reference, "tolerance": config.standalone_tolerance,
                        "protected": trap_kept}
            if config.trap_target is not None:
                selected["target_reached"] = reached
            if not trap_kept:
                logger.warning(
                    "No Trap² checkpoint stayed within %s of the starting update at s = 1: the kept update is the "
                    "starting one, NOT protected. Raise standalone_tolerance, lower lam or the learning rate, or "
                    "validate on more data (fewer examples make the s = 1 score noisier).",
                    config.standalone_tolerance,
                )
    elif best_state is not None:
        selected = {"step": min((r["step"] for r in history if r.get("val") == best), default=steps),
                    "standalone": -best}
    if best_state is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
    model.eval()
    seconds = time.perf_counter() - start
    logger.info("trap2 training: %d steps in %.1fs (lam=%s, selected %s)", steps, seconds, config.lam, selected)
    return ProtectResult(
        steps=steps,
        epochs_run=steps / n_batches if n_batches else float(epoch + 1),
        best_val_loss=None if best == math.inf else best,
        stopped_early=stopped,
        seconds=seconds,
        history=tuple(history),
        selected=selected,
    )


def _lr_scheduler(optimizer: torch.optim.Optimizer, *, config: ProtectConfig, n_batches: int | None) -> Any:
    """The `config.lr_schedule` scheduler (None for "constant"): linear decay to 0 at the run's last step."""
    import torch

    if config.lr_schedule == "constant":
        return None
    total = config.max_steps or config.epochs * (n_batches or 1)  # train_protected checked that one is known
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))


def _trainer_base() -> type:
    try:
        from transformers import Trainer
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError.for_extra(package="transformers", extra="protect", purpose="Trap2Trainer") from exc
    return Trainer


def _make_trainer_class() -> type:
    import torch

    base = _trainer_base()

    class Trap2Trainer(base):  # type: ignore[misc, valid-type]
        """`transformers.Trainer` whose training loss is the Trap² objective; evaluation stays at s = 1."""

        def __init__(self, *args: Any, protect_config: ProtectConfig, loss_fn: LossFn | None = None,
                     **kwargs: Any) -> None:
            if protect_config.project_conflicts:
                raise ProtectionError(
                    "project_conflicts needs the two gradients separately, and Trainer backpropagates one loss: "
                    "train with hubguard.protect.train_protected, or set project_conflicts=False."
                )
            super().__init__(*args, **kwargs)
            self.protect_config = protect_config
            self.trap2_loss_fn = loss_fn
            self._trap2_generator = torch.Generator().manual_seed(protect_config.seed)
            self._trap2_reference: dict[str, torch.Tensor] | None = None
            if self.args.max_grad_norm != protect_config.max_grad_norm:
                self.args.max_grad_norm = protect_config.max_grad_norm

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if return_outputs or not model.training:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            if self.protect_config.mode == "full" and self._trap2_reference is None:
                self._trap2_reference = snapshot_reference(model)  # before the first optimiser step
            out = trap2_loss(model, inputs, config=self.protect_config, generator=self._trap2_generator,
                             reference=self._trap2_reference, loss_fn=self.trap2_loss_fn)
            if self.state.global_step % max(1, self.args.logging_steps) == 0:
                self.log({"trap2_standalone_loss": out.standalone_loss, "trap2_scaled_loss": out.scaled_loss,
                          "trap2_scale": out.scale})
            return out.loss

    return Trap2Trainer


_TRAINER_CLASS: type | None = None


def trap2_trainer_class() -> type:
    """The `Trap2Trainer` class (built on first use so importing hubguard does not import transformers)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        _TRAINER_CLASS = _make_trainer_class()
    return _TRAINER_CLASS


def make_trap2_trainer(
    model: Any,
    *,
    config: ProtectConfig,
    train_dataset: Any,
    eval_dataset: Any,
    output_dir: str,
    data_collator: Any = None,
    loss_fn: LossFn | None = None,
    **training_args: Any,
) -> Any:
    """A ready `Trap2Trainer`: AdamW, clip 1.0, eval + save each epoch, early stopping on eval loss at s = 1."""
    if eval_dataset is None or len(eval_dataset) == 0:
        raise ProtectionError("Early stopping at s = 1 needs validation data: pass a non-empty eval_dataset.")
    from transformers import EarlyStoppingCallback, TrainingArguments

    args = TrainingArguments(
        output_dir=output_dir,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        max_grad_norm=config.max_grad_norm,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=config.seed,
        report_to=[],
        use_cpu=training_args.pop("use_cpu", None) or not _cuda_available(),
        **training_args,
    )
    cls = trap2_trainer_class()
    return cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        protect_config=config,
        loss_fn=loss_fn,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)],
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
