"""Trap² inside `transformers.Trainer`: `Trap2Trainer` (the training loss is the Trap² objective, evaluation stays
at s = 1) and `make_trap2_trainer(...)` (AdamW, clip, eval + save each epoch, early stopping, best model at end)."""

from __future__ import annotations

from typing import Any

from hubguard.errors import MissingDependencyError, ProtectionError
from hubguard.protect.config import ProtectConfig
from hubguard.protect.objective import LossFn, snapshot_reference, trap2_loss


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
            if protect_config.retries:
                raise ProtectionError(
                    "retries restart training from the starting update, which Trainer.train() does not do: train "
                    "with hubguard.protect.train_protected, or set retries=0."
                )
            if protect_config.proxy_mix or protect_config.realign_mix or protect_config.regmean_mix:
                raise ProtectionError(
                    "proxy_mix, realign_mix and regmean_mix need the proxies and merge passes that "
                    "train_protected builds: train with hubguard.protect.train_protected, or set them to 0."
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
