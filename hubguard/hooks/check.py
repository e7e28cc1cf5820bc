"""The pre-upload check: does this folder derive from a registered base, and does its model card say so?

`check_upload(folder)` fingerprints the weights, searches the registry, reads the declared lineage from
the model card (`base_model`, `base_model_relation`, mergekit's `mergekit_config.yml`), and lists problems:

- `undeclared_derivative`: a registered base is found in the weights but not declared;
- `false_base_model`: a declared base is in the registry, yet the weights are independent of it;
- `unverifiable_base_model`: a declared base is not in the registry (a warning, not an error);
- `relation_mismatch`: the declared relation disagrees with what the files show (merge of several bases,
  adapter, quantized) — a warning.

Exit code 0 when nothing is wrong; under `strict`, non-zero when an error-level problem is found.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import HookError

if TYPE_CHECKING:
    from hubguard.weights.store import ByteStore
    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.registry import Registry

ERRORS = {"undeclared_derivative", "false_base_model"}


@dataclass(frozen=True)
class Problem:
    code: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.code in ERRORS


@dataclass(frozen=True)
class CheckReport:
    folder: str
    repo_id: str | None
    declared: dict[str, Any]
    matches: list[dict[str, Any]]
    found_bases: list[str]
    expected_relation: str | None
    problems: list[Problem] = field(default_factory=list)
    fingerprint: "Fingerprint | None" = field(default=None, repr=False, compare=False)

    @property
    def agrees(self) -> bool:
        """Declared lineage and weights agree (no error-level problem)."""
        return not any(p.is_error for p in self.problems)

    def exit_code(self, *, strict: bool) -> int:
        return 1 if strict and not self.agrees else 0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "fingerprint"}
        out["agrees"] = self.agrees
        out["problems"] = [asdict(p) | {"level": "error" if p.is_error else "warning"} for p in self.problems]
        return out


def parse_model_card(text: str | None) -> dict[str, Any]:
    """The YAML metadata of a model card's text (empty when there is no card or no header)."""
    if not text:
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard(text, ignore_metadata_errors=True).data.to_dict() or {}
    except Exception as err:  # noqa: BLE001 - YAML errors come in several types
        raise HookError(f"The model card's YAML header cannot be parsed ({err}). Fix README.md's metadata block.") from err


def read_declared_lineage(store: "ByteStore") -> dict[str, Any]:
    """`base_model` (always a list), `base_model_relation`, tags and licence from README.md; mergekit's config."""
    text = store.read_text("README.md")
    meta = parse_model_card(text)
    base = meta.get("base_model") or []
    if isinstance(base, str):
        base = [base]
    files = set(store.list_files())
    return {
        "base_model": [str(b) for b in base],
        "base_model_relation": meta.get("base_model_relation"),
        "tags": list(meta.get("tags") or []),
        "license": meta.get("license"),
        "has_model_card": text is not None,
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


def check_upload(
    source: "str | os.PathLike[str]",
    *,
    repo_id: str | None = None,
    registry: "Registry | str | os.PathLike[str] | None" = None,
    top_k: int = 5,
    token: str | None = None,
) -> CheckReport:
    """Check a model folder (or an `hf://` repo, read with `token` or HF_TOKEN) against the registry and its
    own model card. The report carries the query's fingerprint (`report.fingerprint`) for callers that draw it."""
    from hubguard.weights.source import open_source
    from hubguard.lineage.comparison import compare_fingerprints
    from hubguard.lineage.fingerprints import fingerprint_checkpoint
    from hubguard.registry import Registry

    spec = os.fspath(source)
    if not spec.startswith("hf://") and not Path(spec).is_dir():
        raise HookError(f"'{spec}' is not a folder. `hubguard check` takes the model folder you are about to upload.")
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    ckpt = open_source(spec, token=token)
    declared = read_declared_lineage(ckpt.store)
    fp = fingerprint_checkpoint(checkpoint=ckpt, name=repo_id or spec)
    own = [repo_id] if repo_id else []
    hits = reg.search(fp, top_k=top_k, exclude=own)
    matches = [h.to_dict() for h in hits]
    found = [h.name for h in hits if h.verdict == "derivative"]
    problems: list[Problem] = []
    for h in hits:
        if h.verdict == "derivative" and h.name not in declared["base_model"]:
            problems.append(Problem(
                "undeclared_derivative",
                f"The weights derive from '{h.name}' (score {h.score:.1f}, z {h.z:.1f}) but the model card does not declare "
                f"it. Add `base_model: {h.name}` to README.md's YAML header.",
            ))
    known = set(reg.names())
    for base in declared["base_model"]:
        if base in found:
            continue
        if base not in known:
            problems.append(Problem(
                "unverifiable_base_model",
                f"The declared base_model '{base}' is not in the registry, so it cannot be verified. A moderator can add it "
                f"with `hubguard registry add hf://{base} --name {base}`.",
            ))
            continue
        result = compare_fingerprints(a=reg.fingerprint(base), b=fp)
        if result.verdict == "independent":
            problems.append(Problem(
                "false_base_model",
                f"The model card declares base_model '{base}', but the weights are independent of it (score "
                f"{result.score:.1f}, z {result.z:.1f}). Fix or remove the base_model entry.",
            ))
    expected = expected_relation(found=found, declared=declared, config=ckpt.config)
    rel = declared["base_model_relation"]
    if rel and expected and rel != expected:
        problems.append(Problem(
            "relation_mismatch",
            f"base_model_relation is '{rel}' but the files look like a '{expected}'. Set `base_model_relation: {expected}`.",
        ))
    return CheckReport(
        folder=spec, repo_id=repo_id, declared=declared, matches=matches, found_bases=found,
        expected_relation=expected, problems=problems, fingerprint=fp,
    )
