"""Scale sweep: metrics of W0 + s·ΔW over s, exactly (scaled `lora_B`, or θ0 + s(θ − θ0) for a full model).

What a merge does to one update (task arithmetic at coefficient s, with nothing else in the merge); the audit,
the benchmarks and the Space draw it with `hubguard.protect.plot.plot_sweep`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hubguard.protect.objective import scaled_in_place
from hubguard.utils import progress

if TYPE_CHECKING:
    import torch

DEFAULT_SCALES = tuple(round(0.1 * i, 2) for i in range(21))
Reporter = Callable[["torch.nn.Module"], dict[str, float]]


def scale_sweep(
    *, model: torch.nn.Module, mode: str, metrics: Reporter, scales: Sequence[float] = DEFAULT_SCALES,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Metrics of W0 + s·ΔW for each s. `model` is a PeftModel (mode 'lora') or the fine-tuned model with
    `reference` = base weights (mode 'full'); it is restored afterwards."""
    import torch

    model.eval()
    rows = []
    for s in progress(scales, desc="scale sweep"):
        with scaled_in_place(model, scale=s, mode=mode, reference=reference), torch.no_grad():
            rows.append({"scale": float(s), **{k: float(v) for k, v in metrics(model).items()}})
    return rows
