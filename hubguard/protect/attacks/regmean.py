"""RegMean (Jin et al., ICLR 2023): merge each linear layer by regression on the models' own inputs to it.

    W* = (Σ_t W_t·G_t)·(Σ_t G_t)⁻¹,   G_t = α·X_tᵀX_t + (1 − α)·diag(X_tᵀX_t)

X_t: the inputs of that layer in model t on the attacker's data of task t (all token positions). Other tensors
(biases, norms) are averaged. No merge coefficient: the attacker picks α on validation.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from hubguard.protect.attacks.base import AttackerModel, AttackSetting, StateDict, best_coefficient
from hubguard.protect.merges import changed_names


def input_grams(attacker: AttackerModel, state: StateDict, *, batches: list[Any], names: list[str]) -> dict[str, torch.Tensor]:
    """XᵀX of the inputs of the linear layers owning the weights `names`, with `state` loaded, over `batches`."""
    model = attacker.load(state)
    modules = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str) -> Any:
        def record(_module: torch.nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            grams[name] = grams.get(name, 0) + x.T @ x

        return record

    for n in names:
        handles.append(modules[n.removesuffix(".weight")].register_forward_hook(hook(n)))
    try:
        with torch.no_grad():
            for batch in batches:
                attacker.loss(model, batch)
    finally:
        for h in handles:
            h.remove()
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
                gs = [alpha * g[n] + (1 - alpha) * torch.diag(g[n].diagonal()) for g in grams]
                num = sum(m[n].float() @ g for m, g in zip(models, gs, strict=True))
                den = sum(gs)
                ridge = 1e-6 * den.diagonal().mean() * torch.eye(den.shape[0])
                out[n] = torch.linalg.solve(den + ridge, num.T).T.to(setting.base[n].dtype)  # W·den = num
            else:
                out[n] = (sum(m[n].float() for m in models) / len(models)).to(setting.base[n].dtype)
        return out

    res = best_coefficient(method="regmean", build=build, coefficients=attacker.regmean_alphas,
                           val_score=setting.val_score, test_metrics=setting.test_metrics)
    return {**asdict(res), "alpha": res.coefficient}
