"""The verdict log: which upload matched which base, with what score, and whether moderators should look."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hubguard.errors import RegistryError
from hubguard.registry import schema
from hubguard.registry.entries import concat, now, user

if TYPE_CHECKING:
    import pyarrow as pa

    from hubguard.registry.store import Registry

# A logged verdict: the lineage verdicts, or "unreadable" (hubguard could not fingerprint the upload).
VERDICTS = ("derivative", "independent", "inconclusive", "unreadable")


def verdict_table(registry: "Registry") -> "pa.Table":
    if not registry.verdicts_path.exists():
        return schema.table_from_rows([], columns=schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT)
    return schema.read_table(registry.verdicts_path, columns=schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT)

def log_verdict(
    registry: "Registry",
    *,
    repo_id: str,
    match: str | None,
    verdict: str,
    score: float | None = None,
    z: float | None = None,
    revision: str | None = None,
    declared_base_model: str | list[str] | None = None,
    declared_relation: str | None = None,
    flagged: bool | None = None,
    reason: str | None = None,
    source: str = "api",
    logged_by: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one verdict to the log. `flagged` defaults to "a derivative whose declared base is not `match`"."""
    if verdict not in VERDICTS:
        raise RegistryError(f"verdict must be one of {', '.join(VERDICTS)} (got {verdict!r}).")
    declared = [declared_base_model] if isinstance(declared_base_model, str) else list(declared_base_model or [])
    if flagged is None:
        flagged = verdict == "derivative" and (match is None or match not in declared)
        if flagged and reason is None:
            reason = f"undeclared derivative of {match}" if not declared else f"declares {declared} but matches {match}"
    row = {
        "schema_version": schema.SCHEMA_VERSION, "logged_at": now(), "repo_id": repo_id, "revision": revision,
        "match": match, "score": score, "z": z, "verdict": verdict,
        "declared_base_model": ",".join(declared) or None, "declared_relation": declared_relation,
        "flagged": bool(flagged), "reason": reason, "source": source, "logged_by": logged_by or user(),
        "details": json.dumps(details, default=str) if details is not None else None,
    }
    registry.make_writable()
    with registry.write_lock():
        old = verdict_table(registry)
        new = schema.table_from_rows([row], columns=schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT)
        table = concat(old, new)
        schema.write_table_atomic(registry.verdicts_path, table)
        registry.write_card(registry.entries_table(), n_verdicts=table.num_rows)
    return row

def read_verdicts(registry: "Registry", *, repo_id: str | None = None, match: str | None = None, verdict: str | None = None,
             flagged: bool | None = None) -> list[dict[str, Any]]:
    """Logged verdicts (oldest first), filtered by exact field values."""
    out = []
    for r in verdict_table(registry).to_pylist():
        if (repo_id is not None and r["repo_id"] != repo_id) or (match is not None and r["match"] != match):
            continue
        if (verdict is not None and r["verdict"] != verdict) or (flagged is not None and bool(r["flagged"]) != flagged):
            continue
        out.append(r)
    return out

def derivatives_of(registry: "Registry", name: str) -> list[dict[str, Any]]:
    """All known derivatives of `name`: uploads whose latest logged verdict against it is "derivative",
    plus registry entries that declare it as their base model."""
    latest: dict[str, dict[str, Any]] = {}
    for r in read_verdicts(registry, match=name):
        latest[r["repo_id"]] = r
    out = [{"repo_id": k, "via": "verdict", **{f: v[f] for f in ("score", "z", "logged_at", "flagged")}}
           for k, v in latest.items() if v["verdict"] == "derivative"]
    out += [{"repo_id": e.name, "via": "declared", "relation": e.base_model_relation}
            for e in registry.list() if e.base_model == name]
    return out

def flagged(registry: "Registry") -> list[dict[str, Any]]:
    """Uploads moderators should look at (flagged verdicts), newest first."""
    return list(reversed(read_verdicts(registry, flagged=True)))
