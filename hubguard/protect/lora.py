"""PEFT LoRA as Trap² uses it: r, alpha = r, dropout, no bias, on the attention projections of the model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubguard.errors import MissingDependencyError, ProtectionError
from hubguard.protect.config import DEFAULT_TARGET_MODULE_FAMILIES, ProtectConfig

if TYPE_CHECKING:
    import torch


def resolve_target_modules(model: torch.nn.Module, *, config: ProtectConfig) -> list[str]:
    """The modules LoRA wraps: `config.target_modules`, else the first q/k/v/o family found in the model."""
    names = [n for n, _ in model.named_modules()]
    if config.target_modules is not None:
        wanted = list(config.target_modules)
        absent = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
        if absent:
            raise ProtectionError(
                f"LoRA target modules {absent} do not occur in the model. Pass names that match its modules "
                f"(e.g. {sorted({n.rsplit('.', 1)[-1] for n in names if n})[:12]})."
            )
        return wanted
    for family in DEFAULT_TARGET_MODULE_FAMILIES:
        if all(any(n == t or n.endswith("." + t) for n in names) for t in family):
            return list(family)
    raise ProtectionError(
        "Could not find the attention projections (q/k/v/o) of this model to attach LoRA. "
        "Pass target_modules=(...) in ProtectConfig."
    )


def attach_lora(model: torch.nn.Module, *, config: ProtectConfig, task_type: str | None = None) -> Any:
    """Wrap `model` with a fresh PEFT LoRA adapter configured as in the paper (alpha = r, no bias)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - peft is installed with the protect extra
        raise MissingDependencyError.for_extra(package="peft", extra="protect", purpose="LoRA protection") from exc
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.effective_lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=resolve_target_modules(model, config=config),
        bias="none",
        task_type=task_type,
    )
    return get_peft_model(model, lora)
