"""Released updates on disk: what kind an update folder is, its base, and reading or loading an adapter.

An update is a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or a full fine-tuned
transformers folder (config.json + safetensors). Only safetensors are read, never pickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError

if TYPE_CHECKING:
    import torch

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def update_kind(path: str | Path) -> str:
    """'adapter' (PEFT folder) or 'full' (transformers folder with safetensors); errors otherwise."""
    p = Path(path)
    if not p.exists():
        raise ProtectionError(f"Update {p} does not exist. Pass a PEFT adapter folder or a model folder.")
    if (p / "adapter_config.json").is_file():
        if not (p / "adapter_model.safetensors").is_file():
            raise ProtectionError(
                f"{p} has adapter_config.json but no adapter_model.safetensors; hubguard only reads safetensors "
                "adapters (re-save with save_pretrained(..., safe_serialization=True))."
            )
        return "adapter"
    if (p / "config.json").is_file() and any(p.glob("*.safetensors")):
        return "full"
    raise ProtectionError(
        f"{p} is neither a PEFT adapter (adapter_config.json + adapter_model.safetensors) nor a model folder "
        "(config.json + *.safetensors)."
    )


def check_base(base: str | Path) -> Path:
    p = Path(base)
    if not (p / "config.json").is_file() or not any(p.glob("*.safetensors")):
        raise ProtectionError(
            f"Base model {p} is missing or not a transformers folder with config.json and safetensors weights. "
            "Pass the local folder of the base the update was trained from."
        )
    return p


def load_adapter(base_model: torch.nn.Module, path: str | Path, **kwargs: Any) -> Any:
    """`PeftModel.from_pretrained`, with a hubguard error when the adapter does not fit the base."""
    import warnings

    from peft import PeftModel

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base_model, str(path), **kwargs)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ProtectionError(
            f"Adapter {path} does not fit the base model ({str(exc).splitlines()[0][:300]}). "
            "Audit it against the base it was trained from."
        ) from exc
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message).lower()]
    if missing:
        raise ProtectionError(
            f"Adapter {path} does not fit the base model: {missing[0][:300]}. "
            "Audit it against the base it was trained from."
        )
    return model


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of a PEFT LoRA folder, from safetensors only."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise ProtectionError(f"{folder} is not a PEFT adapter with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}; "
                              "re-save it with save_pretrained(..., safe_serialization=True).")
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtectionError(f"{folder / ADAPTER_CONFIG} is not a readable JSON adapter config ({exc}); re-save the "
                              "adapter with PEFT's save_pretrained.") from exc
    if not isinstance(cfg, dict) or "r" not in cfg:
        raise ProtectionError(f"{folder / ADAPTER_CONFIG} has no LoRA rank 'r'; re-save the adapter with PEFT.")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ProtectionError(f"{folder} is a {cfg.get('peft_type')} adapter; only LoRA adapters can be locked.")
    return cfg, load_file(str(folder / ADAPTER_WEIGHTS))
