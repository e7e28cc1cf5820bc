"""Scale-lock a released update on disk: a PEFT LoRA adapter (rank grows) or a full fine-tuned model.

    lock_update(update="my-lora", base="base-model", out="my-lora-locked", calibration=batches)

The output is a standard adapter / model folder (plain `peft` / `transformers` load it) with the protection
recorded in its model card. A LoRA adapter is rewritten with rank r' = r + the lock's rank, alpha = r' (scaling 1;
the old alpha/r is folded into B), so W₀ + B'·A' equals the locked weights and PEFT's scaling of B (and Trap²'s)
scales the whole update. Only safetensors adapters are read, never pickles.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from hubguard.errors import ProtectionError
from hubguard.protect.lock import LockConfig, LockPlan, apply_lock, plan_lock
from hubguard.protect.updates import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_base, read_adapter, update_kind
from hubguard.utils import get_logger
from hubguard.utils.files import atomic_write_text
from hubguard.weights.adapters import PEFT_PREFIX

logger = get_logger(__name__)


def _lora_scaling(cfg: Mapping[str, Any]) -> float:
    if cfg.get("use_dora"):
        raise ProtectionError("DoRA adapters normalise their weight columns, which a lock cannot pass through; "
                              "lock a plain LoRA adapter (use_dora=False).")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ProtectionError("Adapters with rank_pattern / alpha_pattern are not supported by the lock yet; "
                              "train with one r and lora_alpha for every module.")
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _pairs(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name (as in the base model) -> (A (r, in), B (out, r))."""
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
            b = tensors.get(key.replace(".lora_A.", ".lora_B."))
            if b is None:
                raise ProtectionError(f"Adapter tensor {key} has no matching lora_B; the adapter file is damaged.")
            out[module] = (a, b)
    return out


def merge_into(model: torch.nn.Module, cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Add scaling·B·A of every LoRA module of the adapter to the plain base `model`, in place; returns it."""
    params = dict(model.named_parameters())
    scaling = _lora_scaling(cfg)
    with torch.no_grad():
        for module, (a, b) in _pairs(tensors).items():
            w = params.get(module + ".weight")
            if w is None:
                raise ProtectionError(f"The adapter's module {module} is not in the base model; lock it against the "
                                      "base it was trained from.")
            w += (scaling * b.float() @ a.float()).to(w.dtype)
    return model


def lock_adapter_tensors(
    cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], plan: LockPlan, weights: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The locked adapter: every module's (A, B) padded to one rank r' and the lock factors appended.

    `weights`: the merged (W₀ + ΔW) state dict the plan was made on; the lock factors are built from it.
    """
    scaling = _lora_scaling(cfg)
    pairs = _pairs(tensors)
    r = int(cfg["r"])
    lock_factors = {e.name.removesuffix(".weight"): e.lora_factors(weights[e.name].float()) for e in plan.entries}
    extra = max(b.shape[1] for b, _ in lock_factors.values())
    r_new = r + extra
    new: dict[str, torch.Tensor] = {}
    for module in sorted(set(pairs) | set(lock_factors)):
        w = weights[module + ".weight"]
        a = torch.zeros(r_new, w.shape[1])
        b = torch.zeros(w.shape[0], r_new)
        if module in pairs:
            a0, b0 = pairs[module]
            a[:r], b[:, :r] = a0.float(), scaling * b0.float()
        if module in lock_factors:
            bl, al = lock_factors[module]
            a[r : r + al.shape[0]], b[:, r : r + bl.shape[1]] = al, bl
        dtype = pairs[module][0].dtype if module in pairs else torch.float32
        new[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.to(dtype).contiguous()
        new[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.to(dtype).contiguous()
    new.update({k: v for k, v in tensors.items() if ".lora_A." not in k and ".lora_B." not in k})  # modules_to_save
    out_cfg = dict(cfg)
    out_cfg.update(r=r_new, lora_alpha=r_new, use_rslora=False)
    missing = sorted(set(lock_factors) - set(pairs))
    if missing:
        targets = cfg.get("target_modules")
        if isinstance(targets, str):
            raise ProtectionError(f"The lock needs LoRA on {missing[:2]}..., which the adapter's target_modules regex "
                                  f"{targets!r} leaves out; train the adapter on all attention projections.")
        out_cfg["target_modules"] = sorted({*(targets or []), *missing})
    return out_cfg, new


_AUTO_BY_TASK = {"SEQ_CLS": "AutoModelForSequenceClassification", "CAUSAL_LM": "AutoModelForCausalLM",
                 "TOKEN_CLS": "AutoModelForTokenClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering",
                 "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM"}


def _loader_for(task_type: str | None) -> Callable[[str], torch.nn.Module]:
    """The transformers Auto class a PEFT adapter of `task_type` wraps (AutoModel when it has none)."""
    import transformers

    auto = getattr(transformers, _AUTO_BY_TASK.get(str(task_type), "AutoModel"))
    return lambda path: auto.from_pretrained(path)


def load_full_model(path: str) -> torch.nn.Module:
    """A full model folder with the class its config names (so heads survive the round trip)."""
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(path)
    cls = next((getattr(transformers, a) for a in (cfg.architectures or []) if hasattr(transformers, a)),
               transformers.AutoModel)
    return cls.from_pretrained(path)


def lock_update(
    *, update: str | Path, base: str | Path, out: str | Path, config: LockConfig | None = None,
    calibration: Iterable[Mapping[str, Any]] | None = None, load_base: Callable[[str], torch.nn.Module] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Lock a released update (PEFT adapter folder or full model folder) and write it to `out`.

    `load_base(path)` loads a plain model (default: the Auto class of the adapter's task_type, or the class a full
    model's config names); `calibration`: input batches (dicts) that choose the lock directions, None for a
    data-free lock. `out` is written in a staging folder next to it and swapped in only when complete. Returns
    the record the card stores.
    """
    from safetensors.torch import save_file

    from hubguard.protect.card import write_protection_card

    config = config or LockConfig()
    kind = update_kind(update)
    base = check_base(base)
    update, out = Path(update), Path(out)
    for name, path in (("update", update), ("base", base)):
        if out.resolve() == path.resolve():
            raise ProtectionError(f"--out {out} is the {name} itself; write the locked update elsewhere.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ProtectionError(f"Output folder {out} is not empty; pass --overwrite or choose another folder.")
    start = time.perf_counter()
    stage = out.with_name(f".{out.name}.hubguard-partial")
    shutil.rmtree(stage, ignore_errors=True)
    if kind == "adapter":
        mode = "lora"
        cfg, tensors = read_adapter(update)
        model = merge_into((load_base or _loader_for(cfg.get("task_type")))(str(base)), cfg, tensors)
        plan = plan_lock(model, config=config, calibration=calibration, for_lora=True)
        out_cfg, new = lock_adapter_tensors(cfg, tensors, plan, model.state_dict())
        shutil.copytree(update, stage, ignore=shutil.ignore_patterns(ADAPTER_WEIGHTS, ADAPTER_CONFIG, "*.bin"))
        save_file(new, str(stage / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        atomic_write_text(stage / ADAPTER_CONFIG, json.dumps(out_cfg, indent=2, sort_keys=True) + "\n")
    else:
        mode = "full"
        model = (load_base or load_full_model)(str(update))
        plan = plan_lock(model, config=config, calibration=calibration, for_lora=False)
        apply_lock(model, plan)
        shutil.copytree(update, stage, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.index.json"))
        model.save_pretrained(str(stage))
    record = {**plan.record(), "mode": mode, "seconds": time.perf_counter() - start, "source_update": str(update)}
    write_protection_card(stage, config=None, mode=mode, base_model=str(base), lock=record)
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    logger.info("Locked %s -> %s (%d weights, rank +%s)", update, out, len(plan.entries), record["rank_added"])
    return record


__all__ = ["lock_adapter_tensors", "lock_update", "merge_into", "read_adapter"]
