"""Model-card section and sidecar JSON that record a release's merge protection.

The protected checkpoint stays standard (PEFT adapter or safetensors model); this module only adds:
- `README.md`: YAML metadata (`base_model`, `base_model_relation`, tags `hubguard`, `trap2`,
  `merge-protected`) and a "Merge protection (Trap²)" section with the settings;
- `hubguard_protection.json`: the same settings, machine-readable, with a schema version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubguard.errors import ProtectionError
from hubguard.protect.config import PROTECTION_SCHEMA_VERSION, ProtectConfig

SIDECAR_NAME = "hubguard_protection.json"
SECTION_TITLE = "## Merge protection (Trap²)"
TAGS = ("hubguard", "trap2", "merge-protected")


def protection_record(
    *, config: ProtectConfig, base_model: str | None, training: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The dict written to `hubguard_protection.json`."""
    return {
        "schema_version": PROTECTION_SCHEMA_VERSION,
        "method": "trap2",
        "reference": "Jang, Kim, Koo, Ok — Trap²: scale-sensitive merge protection (ICML 2026)",
        "base_model": base_model,
        "settings": config.to_dict(),
        "training": training or {},
    }


def render_section(record: dict[str, Any]) -> str:
    s = record.get("settings", {})
    lines = [
        SECTION_TITLE,
        "",
        "This release was fine-tuned with a scale-sensitive objective: it works as released (scale 1) and is",
        "trained to break when a merge re-scales it (task arithmetic, TIES, DARE, averaging). Merging it into",
        "other models is not supported by its publisher. It loads with plain `transformers`/`peft`.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
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
    config: ProtectConfig,
    base_model: str | None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write the sidecar JSON and add (or replace) the protection section of `folder/README.md`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ProtectionError(f"Cannot write the model card: {folder} is not a folder. Save the checkpoint first.")
    record = protection_record(config=config, base_model=base_model, training=training)
    (folder / SIDECAR_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    from huggingface_hub import ModelCard, ModelCardData

    readme = folder / "README.md"
    card = ModelCard(readme.read_text(encoding="utf-8")) if readme.exists() else ModelCard("---\n---\n")
    data = card.data.to_dict() if card.data is not None else {}
    tags = list(dict.fromkeys([*(data.get("tags") or []), *TAGS]))
    data["tags"] = tags
    if base_model:
        if not data.get("base_model"):
            data["base_model"] = base_model
        if not data.get("base_model_relation"):
            data["base_model_relation"] = "adapter" if config.mode == "lora" else "finetune"
    if config.mode == "lora":
        data.setdefault("library_name", "peft")
    body = card.text
    if SECTION_TITLE in body:
        head, _, rest = body.partition(SECTION_TITLE)
        nxt = rest.find("\n## ")
        body = head + (rest[nxt + 1:] if nxt >= 0 else "")
    body = body.rstrip() + ("\n\n" if body.strip() else "") + render_section(record)
    new = ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n{body}")
    readme.write_text(str(new), encoding="utf-8")
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
