"""The pre-upload check: does this folder derive from a registered base, and does its model card say so?

`check_upload(folder)` fingerprints the weights, searches the registry (the verification pipeline,
`hubguard.lineage.verify`), reads the declared lineage from the model card (`base_model`,
`base_model_relation`, mergekit's `mergekit_config.yml`), and lists problems:

- `undeclared_derivative`: a registered base is found in the weights but not declared;
- `false_base_model`: a declared base is in the registry, yet the weights are independent of it;
- `unverifiable_base_model`: a declared base is not in the registry (a warning, not an error);
- `relation_mismatch`: the declared relation disagrees with what the files show (merge of several bases,
  adapter, quantized) — a warning;
- `invalid_model_card`: README.md's YAML header cannot be parsed, so nothing is declared;
- `shadow_weights`: files that hold weights but are not what transformers loads (a variant, an unused index and
  its shards, pickles beside safetensors, GGUF/ONNX exports, weights in another folder) — a warning: the verdict
  is about the weights transformers loads, and these were not verified.

A PEFT adapter is checked as base ⊕ adapter; the base its adapter_config.json names counts as declared lineage.

Every repo gets a report: weights hubguard cannot read (pickle only, an unsupported architecture, no config,
corrupt files, an adapter whose base is out of reach) give `status="unreadable"` with the reason and the fix,
never a bare error. Exit codes: 0 ok, 1 an error-level problem under `strict`, 2 unreadable.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import HookError, HubguardError, RegistryError, RemoteError
from hubguard.hooks.card import expected_relation, read_declared_lineage, same_repo
from hubguard.utils import get_logger

if TYPE_CHECKING:
    from hubguard.lineage.candidate import Candidate
    from hubguard.lineage.candidate_memo import CandidateMemo
    from hubguard.lineage.comparison import Comparison
    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.registry import Registry
    from hubguard.registry.search import SearchResult
    from hubguard.weights.store import ByteStore

logger = get_logger(__name__)

ERRORS = {"undeclared_derivative", "false_base_model", "invalid_model_card", "unreadable"}
STATUSES = ("ok", "problems", "unreadable")


@dataclass(frozen=True)
class Problem:
    code: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.code in ERRORS


@dataclass(frozen=True)
class CheckReport:
    """What the check found. `status`: ok | problems (an error-level problem) | unreadable (`reason`, `fix`)."""

    folder: str
    repo_id: str | None
    status: str
    declared: dict[str, Any]
    matches: list[dict[str, Any]] = field(default_factory=list)
    found_bases: list[str] = field(default_factory=list)
    expected_relation: str | None = None
    problems: list[Problem] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)  # per candidate layer: best base and its layer
    reason: str | None = None  # unreadable: what hubguard could not read, and why
    fix: str | None = None  # unreadable: what the uploader must do
    error: str | None = None  # unreadable: the hubguard error class
    fingerprint: "Fingerprint | None" = field(default=None, repr=False, compare=False)

    @property
    def agrees(self) -> bool:
        """Declared lineage and weights agree (no error-level problem, weights readable)."""
        return self.status == "ok"

    def exit_code(self, *, strict: bool) -> int:
        if self.status == "unreadable":
            return 2
        return 1 if strict and self.status == "problems" else 0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "fingerprint"}
        out["agrees"] = self.agrees
        out["problems"] = [asdict(p) | {"level": "error" if p.is_error else "warning"} for p in self.problems]
        return out


def _unreadable(spec: str, repo_id: str | None, declared: dict[str, Any], err: HubguardError) -> CheckReport:
    logger.info("check of %s: unreadable: %s", spec, err)
    return CheckReport(
        folder=spec, repo_id=repo_id, status="unreadable", declared=declared, reason=str(err), fix=err.fix,
        error=type(err).__name__, problems=[Problem("unreadable", f"hubguard cannot fingerprint these weights: {err}")],
    )


def _problems(*, hits: "list[SearchResult]", declared: dict[str, Any], known: set[str],
              checked: "dict[str, Comparison]") -> list[Problem]:
    problems: list[Problem] = []
    if declared.get("card_error"):
        problems.append(Problem("invalid_model_card", f"{declared['card_error']} Until then the repo declares no lineage."))
    for h in hits:
        if h.verdict == "derivative" and not any(same_repo(h.name, b) for b in declared["base_model"]):
            problems.append(Problem(
                "undeclared_derivative",
                f"The weights derive from '{h.name}' (score {h.score:.1f}, z {h.z:.1f}) but the model card does not declare "
                f"it. Add `base_model: {h.name}` to README.md's YAML header.",
            ))
    found = [h.name for h in hits if h.verdict == "derivative"]
    for base in declared["base_model"]:
        if any(same_repo(base, f) for f in found):
            continue
        entry = next((k for k in known if same_repo(k, base)), None)
        if entry is None:
            problems.append(Problem(
                "unverifiable_base_model",
                f"The declared base_model '{base}' is not in the registry, so it cannot be verified. A moderator can add it "
                f"with `hubguard registry add hf://{base} --name {base}`.",
            ))
        elif checked[entry].verdict == "independent":
            result = checked[entry]
            problems.append(Problem(
                "false_base_model",
                f"The model card declares base_model '{base}', but the weights are independent of it (score "
                f"{result.score:.1f}, z {result.z:.1f}). Fix or remove the base_model entry.",
            ))
    return problems


def _verify(candidate: "Candidate", reg: "Registry", *, repo_id: str | None, top_k: int,
            declared: dict[str, Any]) -> tuple["list[SearchResult]", "dict[str, Comparison]", list[dict[str, Any]]]:
    """Registry hits, the comparison of every declared or found base, and the per-layer provenance."""
    from hubguard.lineage.verify import layer_provenance, verify_many

    hits = reg.search(candidate, top_k=top_k, exclude=[repo_id] if repo_id else [])
    checked = {h.name: h.comparison for h in hits}
    known = set(reg.names())
    todo = [k for k in known if k not in checked and any(same_repo(k, b) for b in declared["base_model"])]
    checked.update(zip(todo, verify_many(references=[reg.fingerprint(b) for b in todo], candidate=candidate)))
    shown = [h for h in hits if h.verdict == "derivative"] or hits[:1]
    refs = {h.name: reg.fingerprint(h.name) for h in shown}
    layers = layer_provenance(candidate=candidate, references=refs, comparisons=[h.comparison for h in shown]) if refs else []
    return hits, checked, [asdict(s) for s in layers]


def _candidate(checkpoint: Any, *, store: "ByteStore", name: str, family: str | None, memo: "CandidateMemo | None",
               options: dict[str, Any]) -> "Candidate":
    from hubguard.lineage.candidate import open_candidate
    from hubguard.lineage.candidate_memo import content_key

    # An adapter's verdict also depends on its base's bytes, which the key does not cover: never remembered.
    key = content_key(store, name=name, family=family, **options) if memo is not None and checkpoint.base is None else None
    hit = memo.get(key) if memo is not None else None
    if hit is not None:
        return hit
    candidate = open_candidate(checkpoint, name=name, family=family)
    if memo is not None:
        memo.put(key, candidate)
    return candidate


def _with_adapter_base(declared: dict[str, Any], adapter_base: str | None) -> dict[str, Any]:
    """An adapter declares its base in adapter_config.json: it counts as declared lineage."""
    if adapter_base is None or any(same_repo(adapter_base, b) for b in declared["base_model"]):
        return declared
    return {**declared, "base_model": [*declared["base_model"], adapter_base.removeprefix("hf://")]}


def _shadow_problem(shadow: list[dict[str, str]]) -> Problem:
    listed = "; ".join(f"{s['file']} ({s['reason']})" for s in shadow[:10]) + (f"; and {len(shadow) - 10} more"
                                                                              if len(shadow) > 10 else "")
    return Problem(
        "shadow_weights",
        f"Files that hold weights but are not what transformers loads, so hubguard did not verify them: {listed}. "
        "Remove them, or check each one on its own (`hubguard fingerprint FOLDER/FILE`).",
    )


def check_upload(
    source: "str | os.PathLike[str]",
    *,
    repo_id: str | None = None,
    registry: "Registry | str | os.PathLike[str] | None" = None,
    top_k: int = 5,
    token: str | None = None,
    family: str | None = None,
    allow_pickle: bool = False,
    base: "str | os.PathLike[str] | None" = None,
    store: "ByteStore | None" = None,
    memo: "CandidateMemo | None" = None,
) -> CheckReport:
    """Check a model folder (or an `hf://` repo, read with `token` or HF_TOKEN) against the registry and its
    own model card. `base` is where an adapter's base is (default: what adapter_config.json names). The report
    carries the query's fingerprint (`report.fingerprint`) for callers that draw it.
    Raises only for what is not the repo's content's fault: a missing folder or repo, a failed network read, a
    damaged registry. `store` checks exactly these bytes instead of opening `source` (the files a push or an
    upload sends: `hubguard.hooks.stores`); `source` then only names the report. `memo`: a long-running caller's
    `CandidateMemo`; an unchanged model (same commit, or same files) is then not fingerprinted again."""
    from hubguard.registry import Registry
    from hubguard.weights.source import Checkpoint, open_store

    spec = os.fspath(source)
    if store is None and not spec.startswith("hf://") and not Path(spec).is_dir():
        raise HookError(f"'{spec}' is not a folder. `hubguard check` takes the model folder you are about to upload.")
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    if store is None:
        store = open_store(spec, token=token)  # a missing folder or repo is the caller's error, not a verdict
    declared = read_declared_lineage(store)
    try:
        checkpoint = Checkpoint(store=store, source=spec, allow_pickle=allow_pickle, base=base, token=token)
        declared = _with_adapter_base(declared, checkpoint.adapter_base)
        candidate = _candidate(checkpoint, store=store, name=repo_id or spec, family=family, memo=memo,
                               options={"allow_pickle": allow_pickle, "base": base})
        hits, checked, layers = _verify(candidate, reg, repo_id=repo_id, top_k=top_k, declared=declared)
    except (RegistryError, RemoteError):
        raise  # a damaged registry or a failed network read says nothing about the repo: retry, don't judge
    except HubguardError as err:
        return _unreadable(spec, repo_id, declared, err)
    problems = _problems(hits=hits, declared=declared, known=set(reg.names()), checked=checked)
    if checkpoint.shadow:
        problems.append(_shadow_problem(checkpoint.shadow))
    found = [h.name for h in hits if h.verdict == "derivative"]
    expected = expected_relation(found=found, declared=declared, config=checkpoint.config)
    rel = declared["base_model_relation"]
    if rel and expected and rel != expected:
        problems.append(Problem(
            "relation_mismatch",
            f"base_model_relation is '{rel}' but the files look like a '{expected}'. Set `base_model_relation: {expected}`.",
        ))
    return CheckReport(
        folder=spec, repo_id=repo_id, status="problems" if any(p.is_error for p in problems) else "ok",
        declared=declared, matches=[h.to_dict() for h in hits], found_bases=found, expected_relation=expected,
        problems=problems, layers=layers, fingerprint=candidate.fingerprint,
    )
