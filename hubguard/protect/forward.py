"""Calling a model on a batch, optionally with some of its tensors replaced (`torch.func.functional_call`): the
passes of the Trap² objective and its variants."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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
