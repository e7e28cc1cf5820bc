"""Calling a model on a batch, optionally with some of its tensors replaced (`torch.func.functional_call`): the
passes of the Trap² objective and its variants; `leading_rows`, the part of a batch a cheaper trap pass sees;
`written_in_place`, a merge pass's tensors written into the model for the selection's probes."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError

if TYPE_CHECKING:
    import torch


def mean_loss(loss: torch.Tensor) -> torch.Tensor:
    """A loss_fn's result as one number: per-example losses are averaged, a scalar is kept."""
    return loss if loss.dim() == 0 else loss.mean()


def call(model: torch.nn.Module, inputs: Any, overrides: Mapping[str, torch.Tensor] | None) -> Any:
    """`model(**inputs)` (a dict batch) or `model(inputs)`, with `overrides` standing in for those parameters."""
    from torch.func import functional_call

    args, kwargs = ((), dict(inputs)) if isinstance(inputs, Mapping) else ((inputs,), {})
    if overrides is None:
        return model(*args, **kwargs)
    return functional_call(model, dict(overrides), args, kwargs, strict=False)


def leading_rows(inputs: Any, *, fraction: float) -> Any:
    """The first ⌈fraction·B⌉ examples of a batch of B (`ProtectConfig.trap_fraction`): a tensor [B, ...], or a dict /
    list / tuple whose tensors all have B rows (non-tensor entries are passed as is). fraction 1 returns the batch
    itself."""
    import torch

    if fraction >= 1.0:
        return inputs
    values = list(inputs.values()) if isinstance(inputs, Mapping) else (
        list(inputs) if isinstance(inputs, (list, tuple)) else [inputs])
    sizes = {v.shape[0] for v in values if isinstance(v, torch.Tensor) and v.dim() > 0}
    if len(sizes) != 1:
        found = "no tensor" if not sizes else f"tensors with {sorted(sizes)} rows"
        raise ProtectionError(f"trap_fraction < 1 cuts the batch along its examples, but this batch has {found}; "
                              "pass a tensor or a dict of tensors of one batch size, or set trap_fraction=1.")
    keep = max(1, math.ceil(fraction * sizes.pop()))

    def cut(v: Any) -> Any:
        return v[:keep] if isinstance(v, torch.Tensor) and v.dim() > 0 else v

    if isinstance(inputs, Mapping):
        return {k: cut(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(cut(v) for v in inputs)
    return cut(inputs)


@contextmanager
def written_in_place(model: torch.nn.Module, overrides: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """`overrides` (parameter name -> tensor, e.g. a merge pass's `parameters(...)`) copied into the model's
    parameters, detached (inference: the selection's probes); the old values restored on exit."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        values = {n: t.detach() for n, t in overrides.items()}
        saved = {n: params[n].detach().clone() for n in values}
        for n, t in values.items():
            params[n].copy_(t)
    try:
        yield
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
