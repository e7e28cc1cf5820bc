"""What a repo declares about its lineage: the model card's `base_model` / `base_model_relation`, mergekit's
config, an adapter config — read as the Hub documents them.

`base_model` is one repo id or a list (a merge); an entry may also be a mapping with the id under `name`
(some tools write that). Repo ids are compared case-insensitively, as the Hub resolves them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubguard.errors import HookError, HubguardError

if TYPE_CHECKING:
    from hubguard.weights.store import ByteStore

RELATIONS = ("adapter", "merge", "quantized", "finetune")


def same_repo(a: str | None, b: str | None) -> bool:
    """Two repo ids name the same repo (the Hub treats ids case-insensitively)."""
    return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


def parse_model_card(text: str | None) -> dict[str, Any]:
    """The YAML metadata of a model card's text (empty when there is no card or no header)."""
    if not text:
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(text, ignore_metadata_errors=True).data.to_dict() or {}
    except Exception as err:  # noqa: BLE001 - YAML errors come in several types
        raise HookError(f"The model card's YAML header cannot be parsed ({err}). Fix README.md's metadata block.") from err
    return data if isinstance(data, dict) else {}


def _base_models(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("name") or item.get("id")
        if isinstance(item, str) and item.strip():
            out.append(item.strip())
    return out


def read_declared_lineage(store: "ByteStore | None") -> dict[str, Any]:
    """`base_model` (always a list), `base_model_relation`, tags and licence from README.md; mergekit's config;
    whether an adapter config is present. `card_error` says why a card could not be read (then it counts as none)."""
    text, files, card_error = None, set(), None
    meta: dict[str, Any] = {}
    if store is not None:
        try:
            files = set(store.list_files())
            text = store.read_text("README.md")
            meta = parse_model_card(text)
        except HubguardError as err:
            card_error = str(err)
    relation = meta.get("base_model_relation")
    tags = meta.get("tags")
    return {
        "base_model": _base_models(meta.get("base_model")),
        "base_model_relation": relation if isinstance(relation, str) else None,
        "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
        "license": meta.get("license") if isinstance(meta.get("license"), str) else None,
        "has_model_card": text is not None,
        "card_error": card_error,
        "mergekit_config": "mergekit_config.yml" in files,
        "adapter": "adapter_config.json" in files,
    }


def expected_relation(*, found: list[str], declared: dict[str, Any], config: dict[str, Any]) -> str | None:
    """The relation the files show: adapter, merge (several bases or a mergekit config), quantized, finetune."""
    if declared["adapter"]:
        return "adapter"
    if len(found) > 1 or declared["mergekit_config"]:
        return "merge"
    if "quantization_config" in config:
        return "quantized"
    return "finetune" if found else None
