"""The verdict log: which upload matched which base, with what score, and whether moderators should look.

Stored as append-only Parquet segments with a local SQLite index (`hubguard.registry.verdict_store`): an append
writes one small file, and every query here — by repo and revision, by match, flagged since a date — is an index
lookup, never a scan of the log.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hubguard.errors import RegistryError
from hubguard.registry import schema
from hubguard.registry.entries import now, user
from hubguard.registry.verdict_store import VerdictStore, repo_key

if TYPE_CHECKING:
    from pathlib import Path

    import pyarrow as pa

    from hubguard.registry.store import Registry

# A logged verdict: the lineage verdicts, or "unreadable" (hubguard could not fingerprint the upload).
VERDICTS = ("derivative", "independent", "inconclusive", "unreadable")


def verdict_table(registry: "Registry") -> "pa.Table":
    """The whole log as one table (oldest first). Reads every segment: for exports, not for queries."""
    import pyarrow as pa

    store = VerdictStore(registry)
    tables = [store.read_segment(s) for s in store.segments()]
    if not tables:
        return schema.table_from_rows([], columns=schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT)
    return pa.concat_tables(tables)


def verdict_row(
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
    """One row of the log, checked. `flagged` defaults to "a derivative whose declared base is not `match`"."""
    if verdict not in VERDICTS:
        raise RegistryError(f"verdict must be one of {', '.join(VERDICTS)} (got {verdict!r}).")
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise RegistryError("A verdict needs the repo id of the upload it is about (repo_id='org/name').")
    declared = [declared_base_model] if isinstance(declared_base_model, str) else list(declared_base_model or [])
    if flagged is None:
        flagged = verdict == "derivative" and (match is None or repo_key(match) not in {repo_key(d) for d in declared})
        if flagged and reason is None:
            reason = f"undeclared derivative of {match}" if not declared else f"declares {declared} but matches {match}"
    return {
        "schema_version": schema.SCHEMA_VERSION, "logged_at": now(), "repo_id": repo_id, "revision": revision,
        "match": match, "score": score, "z": z, "verdict": verdict,
        "declared_base_model": ",".join(declared) or None, "declared_relation": declared_relation,
        "flagged": bool(flagged), "reason": reason, "source": source, "logged_by": logged_by or user(),
        "details": json.dumps(details, default=str) if details is not None else None,
    }


def log_verdicts(registry: "Registry", rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append rows (each the keywords of `verdict_row`) in one segment; returns the rows as logged."""
    if not rows:
        return []
    full = [verdict_row(**r) for r in rows]
    registry.make_writable()
    with registry.write_lock():
        table = schema.table_from_rows(full, columns=schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT)
        total = VerdictStore(registry).append(table)
        registry.write_card(registry.entries_table(), n_verdicts=total)
    return full


def append_rows(registry: "Registry", rows: list[dict[str, Any]]) -> None:
    """Append rows logged elsewhere as they are (their `logged_at` and `logged_by` kept), in one segment."""
    if not rows:
        return
    registry.make_writable()
    with registry.write_lock():
        table = schema.table_from_rows(rows, columns=schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT)
        total = VerdictStore(registry).append(table)
        registry.write_card(registry.entries_table(), n_verdicts=total)


def compact_verdicts(registry: "Registry") -> "Path | None":
    """The whole log in one file, `data/verdicts.parquet` (what a commit of the log as one file uploads)."""
    with registry.write_lock():
        return VerdictStore(registry).compact_all()


def log_verdict(registry: "Registry", **row: Any) -> dict[str, Any]:
    """Append one verdict to the log (see `verdict_row` for the fields)."""
    return log_verdicts(registry, [row])[0]


def count_verdicts(registry: "Registry") -> int:
    return int(VerdictStore(registry).scalar("SELECT count(*) FROM rows"))


def read_verdicts(registry: "Registry", *, repo_id: str | None = None, match: str | None = None, verdict: str | None = None,
                  flagged: bool | None = None, revision: str | None = None, source: str | None = None,
                  since: str | None = None, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
    """Logged verdicts (oldest first, or newest first), filtered by field values (repo ids case-insensitively;
    `since`: logged at or after this ISO date/time)."""
    where, params = [], []
    for column, value in (("repo_key", repo_key(repo_id)), ('"match"', match), ("verdict", verdict),
                          ("revision", revision), ("source", source)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if flagged is not None:
        where.append("flagged = 1" if flagged else "flagged = 0")
    if since is not None:
        where.append("logged_at >= ?")
        params.append(since)
    sql = "SELECT * FROM rows" + (f" WHERE {' AND '.join(where)}" if where else "")
    direction = "DESC" if newest_first else "ASC"
    # Rows are logged in time order: by time, flagged and since-queries walk the (partial) time index, not the table.
    order = f"logged_at {direction}, seq {direction}" if flagged or since is not None else f"seq {direction}"
    sql += f" ORDER BY {order}" + (" LIMIT ?" if limit is not None else "")
    if limit is not None:
        params.append(int(limit))
    return VerdictStore(registry).query(sql, tuple(params))


def has_verdict(registry: "Registry", *, repo_id: str, revision: str, source: str | None = None) -> bool:
    """Whether the log holds a verdict on `repo_id` at `revision` (from `source`): one index probe."""
    sql = "SELECT 1 FROM rows WHERE repo_key = ? AND revision = ?" + (" AND source = ?" if source else "") + " LIMIT 1"
    params = (repo_key(repo_id), revision, *((source,) if source else ()))
    return bool(VerdictStore(registry).query(sql, params))


def derivatives_of(registry: "Registry", name: str) -> list[dict[str, Any]]:
    """All known derivatives of `name`: uploads whose latest logged verdict against it is "derivative",
    plus registry entries that declare it as their base model."""
    latest: dict[str, dict[str, Any]] = {}
    for r in VerdictStore(registry).query(
            'SELECT repo_id, repo_key, verdict, score, z, logged_at, flagged, seq FROM rows WHERE "match" = ? ORDER BY seq',
            (name,)):
        latest[repo_key(r["repo_id"]) or ""] = r
    out = [{"repo_id": v["repo_id"], "via": "verdict", **{f: v[f] for f in ("score", "z", "logged_at", "flagged")}}
           for v in latest.values() if v["verdict"] == "derivative"]
    out += [{"repo_id": e.name, "via": "declared", "relation": e.base_model_relation}
            for e in registry.list() if e.base_model == name]
    return out


def flagged(registry: "Registry", *, since: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Uploads moderators should look at (flagged verdicts), newest first; `since` an ISO date/time."""
    return read_verdicts(registry, flagged=True, since=since, limit=limit, newest_first=True)
