"""Repair: win back the s = 1 score of the most protected checkpoint when it lost more than the tolerance.

A Trap² checkpoint with a strong trap often costs a few points at s = 1, more than `standalone_tolerance`, and the
trap selection then drops it and keeps a weaker trap or the starting update. Repair continues from that checkpoint
with standalone-only steps (λ = 0: the task loss, plus `distill`'s KL to the starting update when it is set). The
trap is a property of the other scales, and a short fine-tune at s = 1 moves them little — the reason the attacker's
short re-fine-tune before merging does not undo a formed trap (benchmarks/README.md, `refinetune`). Each repaired
state is validated like a Trap² checkpoint and competes in the same selection, so a repair that also undoes the
trap is simply not kept. Not in the paper; `ProtectConfig.repair_steps`, `repair_lr`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hubguard.protect.config import ProtectConfig

if TYPE_CHECKING:
    import torch

StepFn = Callable[..., dict[str, Any]]  # trainer._step


def repair(model: torch.nn.Module, *, keeper: Any, batches: Iterable[Any], config: ProtectConfig,
           params: list[torch.nn.Parameter], step_fn: StepFn, first_step: int, **step_kwargs: Any,
           ) -> list[dict[str, Any]]:
    """Run the repair phase after the trap phase's `first_step` steps; returns the records of its steps.

    `keeper` is the trainer's `_Keeper` (its `selector` names the checkpoint to repair; its `validate` scores the
    repaired states), `step_fn` the trainer's one optimiser step, given `step_kwargs` (generator, reference, loss_fn,
    teacher) unchanged. Nothing happens when no checkpoint needs it (`TrapSelector.to_repair`).
    """
    import torch

    source = keeper.selector.to_repair()  # repair_steps > 0 implies selection="trap" (ProtectConfig)
    if source is None:
        return []
    keeper.load(source.state)
    # the standalone term only; the variants that shape the trap term are off with it
    plain = config.replace(lam=0.0, project_conflicts=False, refit_steps=0, interference=0.0, lam_control=0.0)
    optimizer = torch.optim.AdamW(params, lr=config.repair_lr or config.learning_rate,
                                  weight_decay=config.weight_decay)
    every = config.eval_every or config.repair_steps
    records = []
    model.train()
    for i, batch in zip(range(config.repair_steps), itertools.cycle(batches), strict=False):
        step = first_step + i
        record = step_fn(model, batch, config=plain, params=params, optimizer=optimizer, scheduler=None,
                         step=step, shift=None, variants=None, **step_kwargs)
        record["repair_from"] = source.step
        if (i + 1) % every == 0 or i + 1 == config.repair_steps:
            keeper.validate(step + 1, record)
        records.append(record)
    return records
