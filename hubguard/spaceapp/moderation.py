"""Moderator actions: the flagged queue (confirm / dismiss with a note), adding and removing registry entries,
and marking a known derivative. Every action first calls `Moderators.require` (server side), then writes the
verdict log (or the registry) through `SpaceState`, so it is committed back to a Hub dataset in the next batch.

A decision is a verdict-log row: `source="moderator"`, `logged_by` the moderator, `flagged=False`, and
`details = {"decision": "confirm" | "dismiss" | "mark", "note": ..., "flag": <logged_at of the flag>}`. The
queue is the flagged rows that no later moderator decision on the same repo and revision answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubguard.errors import RegistryError
from hubguard.spaceapp.sources import resolve_source

if TYPE_CHECKING:
    from hubguard.spaceapp.state import SpaceState

QUEUE_COLUMNS = ["flagged at", "repo", "revision", "match", "score", "z", "reason", "from"]
DECISIONS = ("confirm", "dismiss")


def _key(row: dict[str, Any]) -> tuple[str, str | None]:
    return row["repo_id"].casefold(), row.get("revision")


def flagged_queue(state: "SpaceState") -> list[dict[str, Any]]:
    """Flagged verdicts still waiting for a moderator, newest first."""
    rows = state.registry.verdicts()
    decided_at: dict[tuple[str, str | None], str] = {}
    for r in rows:
        if r["source"] == "moderator":
            decided_at[_key(r)] = max(decided_at.get(_key(r), ""), r["logged_at"] or "")
    waiting = [r for r in rows if r["flagged"] and r["source"] != "moderator"
               and (r["logged_at"] or "") > decided_at.get(_key(r), "")]
    return list(reversed(waiting))


def queue_rows(queue: list[dict[str, Any]]) -> list[list[Any]]:
    return [[(v["logged_at"] or "")[:19], v["repo_id"], (v["revision"] or "")[:10], v["match"] or "",
             None if v["score"] is None else round(v["score"], 1), None if v["z"] is None else round(v["z"], 1),
             v["reason"] or "", v["source"]] for v in queue]


def decide(state: "SpaceState", *, moderator: str, repo_id: str, decision: str, note: str | None) -> dict[str, Any]:
    """Confirm or dismiss the newest waiting flag of `repo_id`."""
    if decision not in DECISIONS:
        raise RegistryError(f"A decision is one of {', '.join(DECISIONS)} (got {decision!r}).")
    repo_id = (repo_id or "").strip()
    flag = next((f for f in flagged_queue(state) if f["repo_id"].casefold() == repo_id.casefold()), None)
    if flag is None:
        raise RegistryError(f"No flagged upload of {repo_id or '(none given)'} waits for review.",
                            fix="Click a row of the flagged queue first.")
    verdict = "derivative" if decision == "confirm" else flag["verdict"]
    what = "confirmed" if decision == "confirm" else "dismissed"
    return state.log_verdict(
        repo_id=flag["repo_id"], revision=flag["revision"], match=flag["match"], verdict=verdict, score=flag["score"],
        z=flag["z"], declared_base_model=(flag["declared_base_model"] or "").split(",") if flag["declared_base_model"] else None,
        declared_relation=flag["declared_relation"], flagged=False, source="moderator", logged_by=moderator,
        reason=f"{what} by {moderator}" + (f": {note.strip()}" if note and note.strip() else ""),
        details={"decision": decision, "note": (note or "").strip() or None, "flag": flag["logged_at"]},
    )


def mark_derivative(state: "SpaceState", *, moderator: str, repo_id: str, base: str, note: str | None) -> dict[str, Any]:
    """Record that `repo_id` derives from registry entry `base` (a moderator's word, not a computed verdict)."""
    repo_id = (repo_id or "").strip()
    if repo_id.startswith("hf://"):
        repo_id = repo_id[5:]
    if not repo_id:
        raise RegistryError("Give the repo id of the derivative to mark (ORG/NAME).")
    entry = state.registry.show((base or "").strip())
    return state.log_verdict(repo_id=repo_id, match=entry.name, verdict="derivative", flagged=False, source="moderator",
                             logged_by=moderator, reason=f"marked by {moderator}" + (f": {note.strip()}" if note and note.strip() else ""),
                             details={"decision": "mark", "note": (note or "").strip() or None})


def add_entry(state: "SpaceState", *, moderator: str, source: str, name: str, family: str | None, license_: str | None,
              notes: str | None) -> dict[str, Any]:
    spec = resolve_source(source, what="the base model to register")
    name = (name or "").strip() or (spec[5:].split("@", 1)[0] if spec.startswith("hf://") else "")
    if not name:
        raise RegistryError("Give the new entry a name (normally its Hub repo id, ORG/NAME).")
    entry = state.add_entry(spec, name=name, family=(family or "").strip() or None, license=(license_ or "").strip() or None,
                            notes=(notes or "").strip() or None, added_by=moderator)
    return entry.to_dict()


def remove_entry(state: "SpaceState", *, moderator: str, name: str) -> dict[str, Any]:  # noqa: ARG001 - who is logged by the caller
    entry = state.remove_entry((name or "").strip())
    return entry.to_dict()
