"""Learned per-layer merge coefficients (AdaMerging-style, Yang et al. 2024), trained on the attacker's labelled
validation data instead of AdaMerging's unlabelled test entropy: a stronger attacker.

    θ = θ₀ + Σ_t λ[l, t]·τ_t   (τ_t = θ_t − θ₀; one λ per layer l and update t, initialised at the best
                                 task-arithmetic coefficient, then `attacker.learned_steps` Adam steps)
"""

from __future__ import annotations

import re
from typing import Any

import torch

from hubguard.protect.attacks.base import AttackSetting
from hubguard.protect.attacks.merging import task_arithmetic_over
from hubguard.protect.merges import changed_names

_LAYER = re.compile(r"\.(\d+)\.")


def layer_groups(names: list[str]) -> dict[str, int]:
    """Tensor name -> group index: one group per layer number (the first `.N.` in the name), one for the rest."""
    keys = sorted({m.group(1) if (m := _LAYER.search(n)) else "" for n in names}, key=lambda k: (k == "", k.zfill(6)))
    index = {k: i for i, k in enumerate(keys)}
    return {n: index[m.group(1) if (m := _LAYER.search(n)) else ""] for n in names}


def learned(setting: AttackSetting) -> dict[str, Any]:
    """Per-layer, per-update coefficients learned by gradient descent on the attacker's data of every task."""
    attacker = setting.needs("attacker", "learned")
    models = [setting.protected, *setting.others]
    start = task_arithmetic_over(setting, models)
    names = changed_names(setting.base, models)
    groups = layer_groups(names)
    base = {n: setting.base[n].float() for n in names}
    taus = {n: torch.stack([m[n].float() - base[n] for m in models]) for n in names}  # (T, *shape)
    lam = torch.full((max(groups.values()) + 1, len(models)), float(start["coefficient"]), requires_grad=True)
    opt = torch.optim.Adam([lam], lr=attacker.learned_lr)
    longest = max(len(d) for d in attacker.data)
    batches = [d[i] for i in range(longest) for d in attacker.data if i < len(d)]

    def merged(weights: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: base[n] + torch.einsum("t,t...->...", weights[groups[n]], taus[n]) for n in names}

    attacker.load(setting.base)
    attacker.model.eval()
    for step in range(attacker.learned_steps):
        opt.zero_grad(set_to_none=True)
        loss = attacker.functional_loss(merged(lam), batches[step % len(batches)])
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = merged(lam.detach())
    state = {**setting.base, **{n: final[n].to(setting.base[n].dtype) for n in names}}
    return {"method": "learned", "coefficient": float(lam.detach().mean()), "val_score": float(setting.val_score(state)),
            "test": {k: float(v) for k, v in setting.test_metrics(state).items()},
            "coefficients": [[round(float(x), 4) for x in row] for row in lam.detach()],
            "start": {"coefficient": start["coefficient"], "test": start["test"]}}
