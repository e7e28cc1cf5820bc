"""Proxy updates for `ProtectConfig.proxy_mix`: public fine-tunes of the same base, read as weight deltas.

A merger combines a protected update with other fine-tunes of its base that anyone can download. Trap² trained at
merges with such fine-tunes (`hubguard.protect.variants`) breaks those merges at coefficient 1 too, where plain Trap²
is escaped (benchmarks/README.md, "proxy merges"). `read_proxies` turns each one (a PEFT LoRA adapter folder, a
model folder, a `.safetensors` file or `hf://ORG/NAME`) into {parameter name of the protected model: ΔW}, through
hubguard's weight reader: exactly the tensors transformers would load, safetensors only, adapters put on the base
(W0 + s·B·A), shapes checked. ΔW is taken on the weights the protected update trains:

    LoRA:  the base weights under the LoRA layers (`<module>.base_layer.weight`), ΔW [out, in]
    full:  every trainable parameter, ΔW of its shape
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hubguard.errors import HubguardError, ProtectionError
from hubguard.weights.adapters import PEFT_PREFIX

if TYPE_CHECKING:
    import torch

__all__ = ["PEFT_PREFIX", "proxy_targets", "read_proxies"]


def proxy_targets(model: torch.nn.Module, *, mode: str) -> dict[str, str]:
    """{parameter name: the tensor name a checkpoint of the base stores it under} for the weights proxies shift."""
    if mode == "lora":
        from hubguard.protect.variants import base_weight_names

        return {n: n.removeprefix(PEFT_PREFIX).replace(".base_layer.weight", ".weight") for n in base_weight_names(model)}
    return {n: n.removeprefix(PEFT_PREFIX) for n, p in model.named_parameters() if p.requires_grad}


def read_proxies(sources: Sequence[str | os.PathLike[str]], *, base: str | os.PathLike[str],
                 model: torch.nn.Module, mode: str, token: str | None = None) -> list[dict[str, torch.Tensor]]:
    """ΔW of each proxy fine-tune of `base` on the weights `model` (the model being protected) trains."""
    from hubguard.weights.adapters import base_tensor_name
    from hubguard.weights.source import open_source

    targets = proxy_targets(model, mode=mode)
    if not targets:
        raise ProtectionError("The model being protected trains no weights a proxy could shift (no LoRA layers in "
                              "lora mode, no trainable parameters in full mode).")
    params = dict(model.named_parameters())
    try:
        base_tensors = open_source(base, token=token).tensors
    except HubguardError as exc:
        raise ProtectionError(f"Cannot read the base {os.fspath(base)} for the proxies: {exc}") from exc
    base_names = set(base_tensors.names())
    out = []
    for source in sources:
        where = os.fspath(source)
        try:
            tensors = open_source(source, base=base, token=token).tensors
            names = set(tensors.names())
            delta = {}
            for param, want in targets.items():
                tuned = tensors.get(base_tensor_name(want, names, where=where))  # exact, else one suffix match
                original = base_tensors.get(base_tensor_name(want, base_names, where=os.fspath(base)))
                if tuple(tuned.shape) != tuple(original.shape) or tuple(tuned.shape) != tuple(params[param].shape):
                    raise ProtectionError(f"Proxy {where}'s '{want}' is {list(tuned.shape)}, the protected model's "
                                          f"{list(params[param].shape)}: it is not a fine-tune of this base.")
                d = tuned - original
                if bool(d.any()):
                    delta[param] = d.to(params[param].dtype)
        except ProtectionError:
            raise
        except HubguardError as exc:
            raise ProtectionError(f"Cannot read proxy {where}: {exc}") from exc
        if not delta:
            raise ProtectionError(f"Proxy {where} changes none of the weights the protected update trains "
                                  f"({len(targets)} tensors, e.g. '{next(iter(targets.values()))}'): it is the base "
                                  "itself, or a fine-tune of other layers. Pass fine-tunes that change these layers.")
        out.append(delta)
    return out
