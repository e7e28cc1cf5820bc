"""Trap² trained against realign (`ProtectConfig.realign_mix`; hubguard's design, not in the paper).

Realign (`hubguard.protect.realign`, the Anchor-Guided Attack) maps the released attention weights W to R(W): the
same function at s = 1, re-expressed in the base's per-head coordinates. A trap trained only on W0 + s·ΔW need not
survive that change of coordinates: the attacker merges W0 + s·(R(W) − W0) instead. With `realign_mix` > 0 a share
of the trap passes is that merge, with R fitted to the current weights every pass and differentiated through (the
fit is plain torch linear algebra), and the selection's probes score it too, so the kept update is trapped in both
coordinates:

    trap pass:  W0 + s·(R(W0 + ΔW) − W0 + Σ_j c_j·P_j)      (LoRA: on the attention weights the map covers)

LoRA only: the realigned weights replace the base weights under the LoRA layers (their lora_B set to zero in the
pass), and attention tensors without a LoRA layer (e.g. an untargeted o_proj) are overridden directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError
from hubguard.weights.adapters import PEFT_PREFIX

if TYPE_CHECKING:
    import torch


def _checkpoint_name(param: str) -> str:
    """A PEFT model's parameter name -> the base checkpoint's tensor name."""
    return param.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


class RealignPass:
    """The realigned trap pass of one LoRA model: which parameters hold each layer's q/k/v/o (and biases), their base
    values, and the LoRA layers whose ΔW the map sees."""

    merges_at_one = False  # its scales are the plain trap pass's draws (a proxy merge's when the step has one)

    def __init__(self, model: torch.nn.Module) -> None:
        from hubguard.errors import HubguardError
        from hubguard.protect.realign import HeadLayout, layer_tensor_names
        from hubguard.protect.variants import lora_modules
        from hubguard.weights.binding import bind_architecture

        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "to_dict"):
            raise ProtectionError("realign_mix needs the model's transformers config (model.config) to find its "
                                  "attention heads; train a transformers model wrapped with PEFT LoRA.")
        params = dict(model.named_parameters())
        by_checkpoint = {_checkpoint_name(n): n for n in params if ".lora_" not in n}
        try:
            bound = bind_architecture(config=config.to_dict(), tensor_names=list(by_checkpoint), source="realign_mix")
        except HubguardError as exc:
            raise ProtectionError(f"realign_mix cannot map this model's attention: {exc}") from exc
        self.layout = HeadLayout.of(bound)
        self.lora = {f"{n}.base_layer.weight": m for n, m in lora_modules(model).items()}
        if not self.lora:
            raise ProtectionError("realign_mix is for LoRA training: wrap the model with PEFT LoRA "
                                  "(hubguard.protect.trainer.attach_lora), or set realign_mix=0.")
        self.layers: list[dict[str, str]] = []  # per layer: realign key -> parameter name
        for i in range(bound.num_layers):
            keys = layer_tensor_names(bound, i, set(by_checkpoint))
            self.layers.append({k: by_checkpoint[n] for k, n in keys.items()})
        self.base = {n: params[n].detach().clone() for layer in self.layers for n in layer.values()}
        self.lora_b = [n for n in params if "lora_B" in n and params[n].requires_grad]

    def _deltas(self) -> dict[str, torch.Tensor]:
        """ΔW of each LoRA layer (differentiable in its A and B), by the base weight's parameter name."""
        return {n: m.get_delta_weight("default") for n, m in self.lora.items()}

    def parameters(self, model: torch.nn.Module, *, scale: float,
                   shift: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Overrides for `functional_call`: W0 + s·(R(W0 + ΔW) − W0 + shift) on the attention tensors, W0 + s·(ΔW +
        shift) on the other LoRA layers, lora_B zero (differentiable in the LoRA parameters)."""
        import torch

        from hubguard.protect.realign import realign_layer

        params = dict(model.named_parameters())
        deltas, shift = self._deltas(), shift or {}
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            weights = {k: self.base[n] + deltas[n] if n in deltas else params[n] for k, n in layer.items()}
            new = realign_layer(weights, base_q=self.base[layer["q"]], base_v=self.base[layer["v"]],
                                layout=self.layout)
            for k, n in layer.items():
                out[n] = self.base[n] + scale * (new[k] - self.base[n] + shift.get(n, 0.0))
        for n, d in deltas.items():
            if n not in out:
                out[n] = params[n] + scale * (d + shift.get(n, 0.0))
        out.update({n: torch.zeros_like(params[n]) for n in self.lora_b})
        return out

    @contextmanager
    def applied(self, model: torch.nn.Module, *, scale: float,
                shift: Mapping[str, torch.Tensor] | None = None) -> Iterator[None]:
        """`parameters(...)` written into the model in place (inference: the selection's probes); restored on exit."""
        import torch

        from hubguard.protect.forward import written_in_place

        with torch.no_grad():
            values = self.parameters(model, scale=scale, shift=shift)
        with written_in_place(model, values):
            yield


def realign_pass_for(model: torch.nn.Module, *, config: Any) -> RealignPass | None:
    """The run's `RealignPass` when `config.realign_mix` > 0 (and the objective is protected), else None."""
    if not (config.protected and config.realign_mix > 0):
        return None
    return RealignPass(model)


__all__ = ["RealignPass", "realign_pass_for"]
