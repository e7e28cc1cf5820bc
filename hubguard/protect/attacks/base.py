"""What every attack shares: the attacker's setting, its trainable model, the coefficient search, the verdict.

An attack starts from state dicts (name -> tensor, the released models' full weights): the public base, the
protected update, the other updates it is merged with. It builds candidate merges, scores them on the attacker's
validation data (`val_score`, higher is better), keeps the best and reports its test metrics, and the verdict
compares the protected task's merged score with the base's (zero-shot): at or below it, the protection held.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hubguard.errors import ProtectionError

StateDict = Mapping[str, torch.Tensor]
StateScorer = Callable[[StateDict], float]
StateReporter = Callable[[StateDict], dict[str, float]]
BatchLoss = Callable[[torch.nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar loss
DEFAULT_COEFFICIENTS = (0.3, 0.5, 0.7, 1.0, 1.5)


@dataclass(frozen=True)
class AttackResult:
    method: str
    coefficient: float
    val_score: float
    test: dict[str, float]
    val_by_coefficient: dict[str, float] = field(default_factory=dict)


def best_coefficient(
    *, method: str, build: Callable[[float], Any], coefficients: Sequence[float], val_score: Callable[[Any], float],
    test_metrics: Callable[[Any], dict[str, float]], cleanup: Callable[[Any], None] | None = None,
    keep_best: bool = False,
) -> AttackResult:
    """Try every coefficient, keep the one with the best validation score, report its test metrics.

    `build(c)` returns a model (or a state dict) that `val_score` / `test_metrics` accept. `keep_best=False` holds
    one at a time and builds the winner again for the test metrics; `keep_best=True` keeps the best so far instead
    (two in memory, one build fewer). `cleanup(model)` is called on every model dropped.
    """
    if not coefficients:
        raise ProtectionError("The attacker needs at least one coefficient to try.")
    scores: dict[str, float] = {}
    best: tuple[float, float] | None = None
    kept: Any = None

    def drop(model: Any) -> None:
        if cleanup:
            cleanup(model)

    for c in coefficients:
        model = build(c)
        with torch.no_grad():
            score = float(val_score(model))
        scores[f"{c:g}"] = score
        if best is None or score > best[1]:
            best = (c, score)
            if keep_best:
                if kept is not None:
                    drop(kept)
                kept, model = model, None
        if model is not None:
            drop(model)
        del model
    assert best is not None
    model = kept if kept is not None else build(best[0])
    with torch.no_grad():
        test = {k: float(v) for k, v in test_metrics(model).items()}
    drop(model)
    return AttackResult(method=method, coefficient=best[0], val_score=best[1], test=test, val_by_coefficient=scores)


@dataclass
class AttackerModel:
    """The attacker's trainable copy of the architecture, its data and its training recipe.

    `model` holds the base's weights under the state-dict names; `loss(model, batch)` is the training loss (the
    batch may carry anything the loss needs); `data[i]` are the attacker's batches for update i, in the order
    [protected, *others] (RegMean's activations, the learned coefficients and fine-tuning after the merge use
    them); `refit_data` is what the re-fine-tune of the protected update trains on (default `data[0]`).
    """

    model: torch.nn.Module
    loss: BatchLoss
    data: tuple[Sequence[Any], ...]
    refit_data: Sequence[Any] | None = None
    lr: float = 1e-4  # re-fine-tune / fine-tune after merge
    epochs: int = 1
    learned_steps: int = 40  # learned merge coefficients: Adam steps on the attacker's data
    learned_lr: float = 0.02
    regmean_alphas: tuple[float, ...] = (0.5, 0.9, 1.0)  # RegMean off-diagonal scalings, chosen on validation
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.data or any(len(d) == 0 for d in self.data):
            raise ProtectionError("The attacker needs at least one batch of data per update (AttackerModel.data).")
        if self.lr <= 0 or self.learned_lr <= 0 or self.epochs < 1 or self.learned_steps < 1:
            raise ProtectionError("AttackerModel: lr and learned_lr must be > 0, epochs and learned_steps >= 1.")
        if not self.regmean_alphas or any(not 0 <= a <= 1 for a in self.regmean_alphas):
            raise ProtectionError(f"AttackerModel.regmean_alphas must be values in [0, 1], got {self.regmean_alphas}.")

    def load(self, state: StateDict) -> torch.nn.Module:
        """`model` with `state`'s tensors copied in (unknown names are an error, missing ones keep the base's)."""
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            for name, value in state.items():
                target = params.get(name, buffers.get(name))
                if target is None:
                    raise ProtectionError(f"State tensor {name!r} is not in the attacker's model; give AttackerModel "
                                          "a model of the released architecture.")
                target.copy_(value)
        return self.model

    def finetune(self, state: StateDict, *, batches: Sequence[Any], names: Sequence[str]) -> dict[str, torch.Tensor]:
        """`state` fine-tuned on `batches` for `epochs` (AdamW, clipped), training the tensors `names` only."""
        model = self.load(state)
        params = dict(model.named_parameters())
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ProtectionError(f"Cannot fine-tune {unknown[0]!r}: it is not a parameter of the attacker's model.")
        flags = {n: p.requires_grad for n, p in params.items()}
        for n, p in params.items():
            p.requires_grad_(n in names)
        trained = [params[n] for n in names]
        opt = torch.optim.AdamW(trained, lr=self.lr, weight_decay=0.0)
        torch.manual_seed(self.seed)
        model.train()
        try:
            for _ in range(self.epochs):
                for batch in batches:
                    opt.zero_grad(set_to_none=True)
                    loss = self.loss(model, batch)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trained, self.max_grad_norm)
                    opt.step()
        finally:
            model.eval()
            for n, p in params.items():
                p.requires_grad_(flags[n])
        return {**state, **{n: params[n].detach().clone() for n in names}}

    def functional_loss(self, overrides: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """`loss(model, batch)` with `overrides` standing in for those tensors (differentiable in them)."""
        from torch.func import functional_call

        return functional_call(_LossModule(self.model, self.loss), {f"model.{n}": t for n, t in overrides.items()},
                               (batch,), strict=False)


class _LossModule(torch.nn.Module):
    """A module whose forward is `loss(model, batch)`, so `functional_call` re-parametrises `model` inside it."""

    def __init__(self, model: torch.nn.Module, loss: BatchLoss) -> None:
        super().__init__()
        self.model = model
        self.fn = loss

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.model, batch)


@dataclass(frozen=True)
class AttackSetting:
    """Everything an attack needs. States are full state dicts (tensors shared with `base` where unchanged).

    `verdict_key`: the key of `test_metrics` that scores the protected task (accuracy, or a loss with
    `higher_is_better=False`). `model_config` (config.json as a dict) binds the architecture map for the realign attack;
    `attacker` is needed by the attacks that train or read activations; `second_protected` (another task's
    protected update, merged in place of `others[0]`) by the two-protected attack.
    """

    base: StateDict
    protected: StateDict
    others: tuple[StateDict, ...]
    val_score: StateScorer
    test_metrics: StateReporter
    verdict_key: str
    higher_is_better: bool = True  # False for a loss: the protection holds when the merged loss is at or above the base's
    coefficients: tuple[float, ...] = DEFAULT_COEFFICIENTS
    model_config: Mapping[str, Any] | None = None
    attacker: AttackerModel | None = None
    second_protected: StateDict | None = None
    density: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.coefficients or any(not c > 0 for c in self.coefficients):
            raise ProtectionError(f"Merge coefficients must be positive numbers, got {self.coefficients}.")

    def needs(self, what: str, attack: str) -> Any:
        value = getattr(self, what)
        if value is None:
            hint = {"model_config": "pass the model's config (config.json as a dict)",
                    "attacker": "pass an AttackerModel (a trainable model, its loss and the attacker's data)",
                    "second_protected": "pass a second protected update"}[what]
            raise ProtectionError(f"The {attack!r} attack needs AttackSetting.{what}: {hint}.")
        return value
