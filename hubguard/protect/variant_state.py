"""What hubguard's variants of the Trap² objective keep between the steps of one run (`hubguard.protect.variants`):
the starting update's outputs for `distill`, the adaptive λ of `lam_control`, the simulated re-fine-tune δ of
`refit_steps`, the proxy updates of `proxy_mix`, the realigned pass of `realign_mix` and the RegMean pass of
`regmean_mix`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hubguard.protect.config import ProtectConfig
from hubguard.protect.objective import LossFn, choose_loss, default_loss
from hubguard.protect.variants import TeacherOutputs, proxy_shift, refit_shift

if TYPE_CHECKING:
    import torch

    from hubguard.protect.realign_pass import RealignPass
    from hubguard.protect.regmean_pass import RegMeanAt, RegMeanPass


class VariantState:
    """The state hubguard's variants of the objective need during a run (`hubguard.protect.variants`): the starting
    update for `distill`, and the simulated re-fine-tune δ of `refit_steps`, refreshed every `refit_every` steps on
    the next training batches (cycled)."""

    def __init__(self, model: torch.nn.Module, batches: Iterable[Any], *, config: ProtectConfig,
                 loss_fn: LossFn | None, reference: Mapping[str, torch.Tensor] | None,
                 teacher: dict[str, torch.Tensor] | None,
                 proxies: Iterable[Mapping[str, torch.Tensor]] = (), realign: RealignPass | None = None,
                 regmean: RegMeanPass | None = None) -> None:
        import itertools

        self.model, self.config, self.loss_fn, self.reference = model, config, loss_fn, reference
        # the starting update's outputs, once per distinct batch, scored with the objective's loss
        self.teacher = None if teacher is None else TeacherOutputs(
            model, teacher, loss_fn=choose_loss(config=config, loss_fn=loss_fn))
        self._source = itertools.cycle(batches) if config.refit_steps and config.protected else None
        self._shift: dict[str, torch.Tensor] | None = None
        self.lam = config.lam
        self._excess: float | None = None
        self.proxies = list(proxies)  # checked by train_protected (`variants.check_proxies`)
        self.realign_pass = realign  # `config.realign_mix`'s RealignPass, or None
        self.regmean_pass = regmean  # `config.regmean_mix`'s RegMeanPass, or None

    def proxy(self, generator: torch.Generator) -> dict[str, torch.Tensor] | None:
        """This step's proxy merge shift (`config.proxy_mix`), or None."""
        return proxy_shift(self.proxies, config=self.config, generator=generator) if self.config.protected else None

    def merge_pass(self, generator: torch.Generator) -> RealignPass | RegMeanAt | None:
        """This step's merge pass: the realigned one (`config.realign_mix`), the RegMean one at a drawn α
        (`config.regmean_mix`), or None; draws nothing when both are off, so runs without them keep their random
        sequence."""
        import torch

        if self.realign_pass is not None:
            drawn = float(torch.rand((), generator=generator)) < self.config.realign_mix
            return self.realign_pass if drawn else None
        if self.regmean_pass is None or float(torch.rand((), generator=generator)) >= self.config.regmean_mix:
            return None
        alphas = self.regmean_pass.alphas
        return self.regmean_pass.at(alphas[int(torch.randint(len(alphas), (), generator=generator))])

    def refresh(self, step: int) -> None:
        """Before step `step` (0-based): the RegMean pass's Grams of the protected task again at the current weights
        every `config.regmean_refresh` steps (none at step 0: they were just computed)."""
        every = self.config.regmean_refresh
        if self.regmean_pass is not None and every and step and step % every == 0:
            self.regmean_pass.refresh(self.model)

    def control(self, out: Any) -> None:
        """Constrained Trap² (`config.lam_control`): move log λ against the standalone loss's excess over the
        starting update's (EMA 0.9), minus the allowed slack."""
        if not self.config.lam_control or out.reference_loss is None or out.task_loss is None:
            return
        excess = out.task_loss - out.reference_loss
        self._excess = excess if self._excess is None else 0.9 * self._excess + 0.1 * excess
        factor = math.exp(-self.config.lam_control * (self._excess - self.config.lam_slack))
        self.lam = min(self.config.lam * 20.0, max(self.config.lam / 20.0, self.lam * factor))

    def shift(self, step: int) -> dict[str, torch.Tensor] | None:
        if self._source is None:
            return None
        if self._shift is None or step % self.config.refit_every == 0:
            batches = [next(self._source) for _ in range(self.config.refit_steps)]
            self._shift = refit_shift(self.model, batches, config=self.config, loss_fn=self.loss_fn or default_loss,
                                      reference=self.reference)
        return self._shift
