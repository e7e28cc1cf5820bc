"""The lineage check tab: `hubguard.hooks.check.check_upload` (the verification path `hubguard check` uses),
shown as a verdict card, dogs, per-layer provenance and a JSON report; the verdict goes to the verdict log.

Two readings the check report leaves to its presenter: a self-match (the checked model *is* a registered
base: same repo id, or the same weights — the same tokens, parameter count and tokenizer, and invariant terms
equal to the entry's verification data within its float16 rounding) is shown
as "this is the registered base", not as an undeclared derivative of itself; and a declared `base_model`
the weights contradict (they match another base, or none while the declared one is registered) is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubguard.hooks.card import same_repo
from hubguard.spaceapp import html
from hubguard.spaceapp.sources import display_name, repo_id_of, resolve_source

if TYPE_CHECKING:
    from hubguard.hooks.check import CheckReport
    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.registry import Registry
    from hubguard.spaceapp.state import SpaceState

LAYER_COLUMNS = ["candidate layer", "best registry base", "its layer", "score", "z"]
SELF_MATCH_SCORE = 99.0
SELF_MATCH_TOLERANCE = 5e-3  # relative L2 difference of the terms; float16 storage rounds at ~1e-3
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class CheckView:
    report: dict[str, Any]
    card: str
    dogs: str
    layers: list[list[Any]] = field(default_factory=list)


def _same_terms(query: "Fingerprint", stored: "Fingerprint") -> bool:
    """The query's invariant terms equal the stored verification data up to its rounding (same weights)."""
    if list(query.tokens) != list(stored.tokens) or set(query.terms) != set(stored.terms):
        return False
    for name, a in query.terms.items():
        b = stored.terms[name]
        if a.shape != b.shape:
            return False
        diff = float((a.float() - b.float()).norm()) / max(float(b.float().norm()), 1e-12)
        if diff > SELF_MATCH_TOLERANCE:
            return False
    return True


def _self_match(report: "CheckReport", spec: str, registry: "Registry") -> str | None:
    """The registry entry that is the checked model itself, if any."""
    if not report.matches:
        return None
    best = report.matches[0]
    entry = best.get("entry") or {}
    repo = repo_id_of(spec)
    if repo and (same_repo(best["name"], repo) or same_repo(entry.get("repo_id"), repo)):
        return best["name"]
    query = report.fingerprint
    if query is None or best["score"] < SELF_MATCH_SCORE or not str(entry.get("storage") or "").startswith(("float16", "float32")):
        return None
    model = query.model
    if entry.get("parameters") != model.get("parameters") or not entry.get("tokenizer_sha256") or \
            entry.get("tokenizer_sha256") != model.get("tokenizer_sha256"):
        return None
    return best["name"] if _same_terms(query, registry.fingerprint(best["name"])) else None


def _declared_rows(report: "CheckReport", *, self_match: str | None, known: set[str]) -> list[html.LineageRow]:
    rows = []
    found = [f for f in report.found_bases if not same_repo(f, self_match)]
    false_bases = [p.message for p in report.problems if p.code == "false_base_model"]
    for base in report.declared["base_model"]:
        if any(same_repo(base, f) for f in report.found_bases) or same_repo(base, self_match):
            rows.append(html.LineageRow("declared", base, "ok", "confirmed by the weights"))
        elif any(same_repo(base, k) for k in known):
            said = next((m for m in false_bases if f"'{base}'" in m), None)
            text = ("contradicted: the weights are independent of it" if said else
                    "not confirmed: the evidence is inconclusive")
            if found:
                text += f"; they derive from {', '.join(found)} instead"
            rows.append(html.LineageRow("declared", base, "error" if said or found else "warning", html.esc(text)))
        elif found:
            rows.append(html.LineageRow("declared", base, "error", html.esc(
                f"contradicted: not in the registry, and the weights derive from {', '.join(found)} instead")))
        else:
            rows.append(html.LineageRow("declared", base, "warning", "not in the registry, so it cannot be verified; "
                                        "a moderator can add it"))
    for base in report.found_bases:
        if same_repo(base, self_match):
            rows.append(html.LineageRow("found", base, "info", "this is the registered base itself"))
        elif not any(same_repo(base, b) for b in report.declared["base_model"]):
            rows.append(html.LineageRow("found", base, "error",
                                        f"undeclared — add <code>base_model: {html.esc(base)}</code> to the model card"))
    return rows


def _card(report: "CheckReport", *, spec: str, self_match: str | None, known: set[str]) -> tuple[str, str]:
    best = report.matches[0] if report.matches else None
    verdict = "registered base" if self_match else (best["verdict"] if best else "independent")
    if self_match:
        headline = f"this is the registered base <b>{html.esc(self_match)}</b>"
    elif report.found_bases:
        headline = f"derivative of <b>{html.esc(', '.join(report.found_bases))}</b>"
    elif best:
        headline = f"closest registry entry: <b>{html.esc(best['name'])}</b> ({html.esc(best['verdict'])})"
    else:
        headline = "no registry entry resembles these weights"
    stats = html.stats_block(score=best and best["score"], z=best and best["z"],
                             fpr=best.get("false_positive_rate") if best else None,
                             matched=best["matched_layers"] if best else None)
    problems = [p for p in report.to_dict()["problems"]
                if not (self_match and p["code"] == "undeclared_derivative" and f"'{self_match}'" in p["message"])]
    card = html.check_card(source=display_name(spec), verdict=verdict, headline=headline, stats=stats,
                           rows=_declared_rows(report, self_match=self_match, known=known),
                           relation=report.declared.get("base_model_relation"), problems=problems)
    return verdict, card


def _dogs(report: "CheckReport", state: "SpaceState", spec: str) -> str:
    from hubguard.portraits.dogs import dog_image
    from hubguard.spaceapp.portraits import entry_dog

    dogs = [html.Dog(dog_image(report.fingerprint, size=html.DOG_PX), display_name(spec), ("the model you checked",),
                     role="query")]
    for m in report.matches:
        dogs.append(html.Dog(entry_dog(state.registry, m["name"]), m["name"],
                             (f"{m['verdict']} · score {m['score']:.1f} · z {m['z']:.1f}",), role="registry",
                             verdict=m["verdict"]))
    return html.dog_grid(dogs, elem_id="hg-dogs")


def _summary(report: "CheckReport", *, spec: str, verdict: str, self_match: str | None) -> dict[str, Any]:
    d = report.to_dict()
    d["matches"] = [{k: v for k, v in m.items() if k not in {"layers", "entry"}} for m in d["matches"]]
    return {"source": display_name(spec), "verdict": verdict, "self_match": self_match, **d}


def _log(state: "SpaceState", report: "CheckReport", *, spec: str, verdict: str, self_match: str | None) -> None:
    """One verdict row per checked repo and outcome (a repeated check with the same outcome logs nothing; the
    registered base itself is no derivative of itself and is not logged)."""
    if self_match:
        return
    repo = repo_id_of(spec) or display_name(spec)
    repo = repo if repo.startswith("example:") or repo_id_of(spec) else spec
    revision = spec.split("@", 1)[1] if spec.startswith("hf://") and "@" in spec else None
    best = report.matches[0] if report.matches else None
    logged = "unreadable" if report.status == "unreadable" else (best["verdict"] if best else "independent")
    match = best["name"] if best else None
    last = state.registry.verdicts(repo_id=repo)
    if last and (last[-1]["verdict"], last[-1]["match"], last[-1]["revision"]) == (logged, match, revision):
        return
    extra: dict[str, Any] = {}
    if report.status == "unreadable":
        extra = {"flagged": True, "reason": report.reason}
    state.log_verdict(repo_id=repo, revision=revision, match=match, verdict=logged, score=best and best["score"],
                      z=best and best["z"], declared_base_model=report.declared["base_model"],
                      declared_relation=report.declared.get("base_model_relation"), source="space", **extra)


def run_check(state: "SpaceState", *, source: str, top_k: int, progress: Progress | None = None) -> CheckView:
    """Check one model against the registry and its own model card."""
    from hubguard.hooks.check import check_upload

    progress = progress or (lambda _f, _d: None)
    spec = resolve_source(source)
    progress(0.1, "Fingerprinting (invariant terms, layer by layer) and searching the registry")
    report = check_upload(spec, registry=state.registry, top_k=max(1, min(int(top_k), 10)), memo=state.candidates)
    if report.status == "unreadable":
        _log(state, report, spec=spec, verdict="unreadable", self_match=None)
        card = html.error_card(title="unreadable", message=f"hubguard cannot fingerprint these weights: {report.reason}",
                               fix=report.fix)
        return CheckView(report=_summary(report, spec=spec, verdict="unreadable", self_match=None), card=card,
                         dogs=html.dog_grid([], elem_id="hg-dogs"))
    known = set(state.registry.names())
    self_match = _self_match(report, spec, state.registry)
    verdict, card = _card(report, spec=spec, self_match=self_match, known=known)
    progress(0.8, "Drawing the dogs")
    dogs = _dogs(report, state, spec)
    layers = [[s["layer"], s["source"] or "— (no match)", "—" if s["match"] is None else s["match"],
               round(s["score"], 1), round(s["z"], 1)] for s in report.layers]
    _log(state, report, spec=spec, verdict=verdict, self_match=self_match)
    return CheckView(report=_summary(report, spec=spec, verdict=verdict, self_match=self_match), card=card, dogs=dogs,
                     layers=layers)
