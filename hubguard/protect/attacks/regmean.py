"""RegMean (Jin et al., ICLR 2023): merge each linear layer by regression on the models' own inputs to it.

    W* = (Σ_t W_t·G_t)·(Σ_t G_t)⁻¹,   G_t = α·X_tᵀX_t + (1 − α)·diag(X_tᵀX_t)

X_t: the inputs of that layer in model t on the attacker's data of task t (all token positions). Other tensors
(biases, norms) are averaged. No merge coefficient: the attacker picks α on validation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch

from hubguard.protect.attacks.base import AttackerModel, AttackSetting, StateDict, best_coefficient
from hubguard.protect.merges import changed_names


@contextmanager
def recording_input_grams(modules: Mapping[str, torch.nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every forward of these modules adds XᵀX [in, in] of its input (all token positions) to the
    yielded dict under the module's key."""
    grams: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(_module: torch.nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # [tokens, in]
            grams[name] = grams.get(name, 0) + x.T @ x

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        yield grams
    finally:
        for h in handles:
            h.remove()


def regularized_grams(grams: Sequence[torch.Tensor], alpha: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One layer's G_t = α·XᵀX + (1 − α)·diag(XᵀX) of every model, and Σ_t G_t plus the ridge 1e-6·mean(diag)·I
    that keeps it invertible."""
    gs = [alpha * g + (1 - alpha) * torch.diag(g.diagonal()) for g in grams]
    den = sum(gs)
    return gs, den + 1e-6 * den.diagonal().mean() * torch.eye(den.shape[0])


def input_grams(attacker: AttackerModel, state: StateDict, *, batches: list[Any], names: list[str]) -> dict[str, torch.Tensor]:
    """XᵀX of the inputs of the linear layers owning the weights `names`, with `state` loaded, over `batches`."""
    model = attacker.load(state)
    modules = dict(model.named_modules())
    with recording_input_grams({n: modules[n.removesuffix(".weight")] for n in names}) as grams, torch.no_grad():
        for batch in batches:
            attacker.loss(model, batch)
    return grams


def regmean(setting: AttackSetting) -> dict[str, Any]:
    attacker = setting.needs("attacker", "regmean")
    models = [setting.protected, *setting.others]
    names = changed_names(setting.base, models)
    modules = dict(attacker.model.named_modules())
    linear = [n for n in names if n.endswith(".weight") and isinstance(modules.get(n.removesuffix(".weight")),
                                                                        torch.nn.Linear)]
    grams = [input_grams(attacker, m, batches=list(attacker.data[min(i, len(attacker.data) - 1)]), names=linear)
             for i, m in enumerate(models)]

    def build(alpha: float) -> StateDict:
        out = dict(setting.base)
        for n in names:
            if n in linear:
                gs, den = regularized_grams([g[n] for g in grams], alpha)
                num = sum(m[n].float() @ g for m, g in zip(models, gs, strict=True))
                out[n] = torch.linalg.solve(den, num.T).T.to(setting.base[n].dtype)  # W·den = num
            else:
                out[n] = (sum(m[n].float() for m in models) / len(models)).to(setting.base[n].dtype)
        return out

    res = best_coefficient(method="regmean", build=build, coefficients=attacker.regmean_alphas,
                           val_score=setting.val_score, test_metrics=setting.test_metrics)
    return {**asdict(res), "alpha": res.coefficient}
