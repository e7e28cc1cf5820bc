"""Model-card section and sidecar JSON that record a release's merge protection.

The protected checkpoint stays standard (PEFT adapter or safetensors model); this module only adds:
- `README.md`: YAML metadata (`base_model`, `base_model_relation`, tags `hubguard`, `merge-protected` and the
  method: `trap2`, `scale-lock`) and a "Merge protection (Trap²)" section with the settings;
- `hubguard_protection.json`: the same settings, machine-readable, with a schema version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubguard.errors import ProtectionError
from hubguard.protect.config import PROTECTION_SCHEMA_VERSION, ProtectConfig
from hubguard.utils.files import atomic_write_text

SIDECAR_NAME = "hubguard_protection.json"
SECTION_TITLE = "## Merge protection (Trap²)"
TAGS = ("hubguard", "merge-protected")


TRAP2_REFERENCE = "Jang, Kim, Koo, Ok — Trap²: scale-sensitive merge protection (ICML 2026)"
LOCK_REFERENCE = "hubguard scale lock (hubguard.protect.lock): a function-preserving per-head re-parametrisation"


def protection_record(
    *, config: ProtectConfig | None, base_model: str | None, training: dict[str, Any] | None = None,
    lock: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict written to `hubguard_protection.json` (Trap² training, a scale lock, or both)."""
    methods = [m for m, on in (("trap2", config is not None), ("scale-lock", lock is not None)) if on]
    if not methods:
        raise ProtectionError("A protection record needs Trap² settings, a lock record, or both.")
    record = {
        "schema_version": PROTECTION_SCHEMA_VERSION,
        "method": "+".join(methods),
        "reference": "; ".join(r for r, on in ((TRAP2_REFERENCE, config is not None), (LOCK_REFERENCE, lock is not None))
                               if on),
        "base_model": base_model,
        "settings": config.to_dict() if config is not None else {},
        "training": training or {},
    }
    if lock is not None:
        record["lock"] = lock
    return record


def render_section(record: dict[str, Any]) -> str:
    s = record.get("settings", {})
    how = {"trap2": "fine-tuned with a scale-sensitive objective (Trap²): it works as released (scale 1) and is\n"
                    "trained to break",
           "scale-lock": "scale-locked: its attention weights are re-parametrised so that it computes exactly what\n"
                         "it computed before at scale 1, and breaks",
           "trap2+scale-lock": "fine-tuned with Trap² and then scale-locked: it works as released (scale 1) and breaks"}
    lines = [
        SECTION_TITLE,
        "",
        f"This release was {how.get(record.get('method', 'trap2'), how['trap2'])} when a merge re-scales it "
        "(task arithmetic, TIES, DARE, averaging). Merging it into",
        "other models is not supported by its publisher. It loads with plain `transformers`/`peft`.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lock = record.get("lock") or {}
    for key in ("gain", "directions", "pairs", "rank_added", "calibrated"):
        if key in lock:
            lines.append(f"| lock {key} | `{lock[key]}` |")
    shown = ["mode", "lam", "scale_min", "scale_max", "exclude", "weight", "scaled_loss_cap", "cap_per_example",
             "project_conflicts", "selection", "standalone_tolerance", "probe_scales", "probe_aggregate",
             "trap_target", "lr_schedule", "lora_r", "lora_alpha", "target_modules",
             "learning_rate", "epochs", "batch_size", "max_grad_norm", "early_stopping_patience", "seed"]
    for key in shown:
        if key in s:
            lines.append(f"| {key} | `{s[key]}` |")
    lines += ["", f"Settings are also in `{SIDECAR_NAME}` (schema {record.get('schema_version')}).", ""]
    return "\n".join(lines)


def write_protection_card(
    folder: str | Path,
    *,
    config: ProtectConfig | None,
    base_model: str | None,
    training: dict[str, Any] | None = None,
    lock: dict[str, Any] | None = None,
    mode: str | None = None,
) -> Path:
    """Write the sidecar JSON and add (or replace) the protection section of `folder/README.md`.

    `config`: the Trap² settings (None for a lock alone); `lock`: `LockPlan.record()` when the update was locked;
    `mode`: "lora" or "full" (default: the config's).
    """
    mode = mode or (config.mode if config is not None else "lora")
    folder = Path(folder)
    if not folder.is_dir():
        raise ProtectionError(f"Cannot write the model card: {folder} is not a folder. Save the checkpoint first.")
    record = protection_record(config=config, base_model=base_model, training=training, lock=lock)
    atomic_write_text(folder / SIDECAR_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")

    from huggingface_hub import ModelCard, ModelCardData

    readme = folder / "README.md"
    card = ModelCard(readme.read_text(encoding="utf-8")) if readme.exists() else ModelCard("---\n---\n")
    data = card.data.to_dict() if card.data is not None else {}
    tags = list(dict.fromkeys([*(data.get("tags") or []), *TAGS, *record["method"].split("+")]))
    data["tags"] = tags
    if base_model:
        if not data.get("base_model"):
            data["base_model"] = base_model
        if not data.get("base_model_relation"):
            data["base_model_relation"] = "adapter" if mode == "lora" else "finetune"
    if mode == "lora":
        data.setdefault("library_name", "peft")
    body = card.text
    if SECTION_TITLE in body:
        head, _, rest = body.partition(SECTION_TITLE)
        nxt = rest.find("\n## ")
        body = head + (rest[nxt + 1:] if nxt >= 0 else "")
    body = body.rstrip() + ("\n\n" if body.strip() else "") + render_section(record)
    new = ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n{body}")
    atomic_write_text(readme, str(new))
    return readme


def read_protection(folder: str | Path) -> dict[str, Any] | None:
    """The recorded protection of a checkpoint folder, or None when it has none."""
    path = Path(folder) / SIDECAR_NAME
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProtectionError(f"{path} is not valid JSON ({exc}); delete it or re-run `hubguard protect`.") from exc
    if not isinstance(record, dict) or "settings" not in record:
        raise ProtectionError(f"{path} does not hold a hubguard protection record; delete it or re-protect.")
    return record
