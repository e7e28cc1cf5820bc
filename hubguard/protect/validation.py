"""Validation of a Trap² run: the model's score at s = 1 and at the probe scales (with proxies: the merges there),
in eval mode without gradients; `evaluate_loss` is the mean loss at s = 1."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError
from hubguard.protect.config import ProtectConfig
from hubguard.protect.objective import LossFn, default_loss, mean_loss

if TYPE_CHECKING:
    import torch

    from hubguard.protect.realign_pass import RealignPass
    from hubguard.protect.regmean_pass import RegMeanPass

Score = Callable[["torch.nn.Module"], float]


def evaluate_loss(model: torch.nn.Module, batches: Iterable[Any], *, loss_fn: LossFn | None = None) -> float:
    """Mean loss over `batches` at s = 1, in eval mode, without gradients."""
    import torch

    from hubguard.protect.forward import call as _call

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


class Validation:
    """Scores of the model as it stands, in eval mode without gradients: at s = 1 (`val_score_fn`, else minus the
    validation loss) and at the probe scales (`probe_score_fn`, else the same score), aggregated."""

    def __init__(self, model: torch.nn.Module, *, config: ProtectConfig, val_batches: Iterable[Any] | None,
                 loss_fn: LossFn | None, val_score_fn: Score | None, probe_score_fn: Score | None,
                 reference: Mapping[str, torch.Tensor] | None,
                 proxies: Sequence[Mapping[str, torch.Tensor]] = (), realign: RealignPass | None = None,
                 regmean: RegMeanPass | None = None) -> None:
        self.model, self.config, self.reference = model, config, reference
        self.proxies = list(proxies)  # checked (`variants.check_proxies`); with them the probes are merges
        self.realign = realign  # `config.realign_mix`: the probes also score the realigned merges
        self.regmean = regmean  # `config.regmean_mix`: the probes also score RegMean's merges at s = 1, every α
        self.val_batches, self.loss_fn = val_batches, loss_fn
        self.val_score_fn, self.probe_score_fn = val_score_fn, probe_score_fn

    @property
    def available(self) -> bool:
        return self.val_score_fn is not None or self.val_batches is not None

    def _score(self) -> float:
        if self.val_score_fn is not None:
            return float(self.val_score_fn(self.model))
        return -evaluate_loss(self.model, self.val_batches, loss_fn=self.loss_fn)  # type: ignore[arg-type]

    def _in_eval(self, fn: Callable[[], Any]) -> Any:
        import torch

        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return fn()
        finally:
            self.model.train(was)

    def at_one(self) -> float:
        """Validation score at s = 1 (higher is better)."""
        return self._in_eval(self._score)

    def probes(self) -> float:
        """The probe scales' scores, aggregated by `config.probe_aggregate` (lower is more protected)."""
        from hubguard.protect.objective import scaled_in_place

        def run() -> float:
            from hubguard.protect.variants import shifted_in_place, weighted_sum

            got = []
            # With proxies the trap is the merge W0 + s·(ΔW + Σ_j P_j): probed at every probe scale and at s = 1.
            scales = (*self.config.probe_scales, 1.0) if self.proxies else self.config.probe_scales
            score = (lambda: float(self.probe_score_fn(self.model))) if self.probe_score_fn else self._score
            for s in scales:
                with scaled_in_place(self.model, scale=s, mode=self.config.mode, reference=self.reference), \
                        shifted_in_place(self.model, shift=weighted_sum((s, p) for p in self.proxies)):
                    got.append(score())
                if self.realign is not None:
                    with self.realign.applied(self.model, scale=s, shift=weighted_sum((1.0, p) for p in self.proxies)):
                        got.append(score())
            for alpha in self.regmean.alphas if self.regmean is not None else ():
                with self.regmean.at(alpha).applied(self.model):
                    got.append(score())
            return max(got) if self.config.probe_aggregate == "max" else sum(got) / len(got)

        return self._in_eval(run)

    def with_probes(self) -> tuple[float, float]:
        """(score at s = 1, the probe scales' scores aggregated by `config.probe_aggregate`)."""
        return self.at_one(), self.probes()
