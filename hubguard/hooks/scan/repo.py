"""One repo of a scan: resolve, check (the one verification path), and the verdict rows — the same function on
every engine, so the local and Ray engines give identical results."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hubguard.errors import HubguardError, RemoteError, SourceNotFoundError

if TYPE_CHECKING:
    from hubguard.registry import Registry

SOURCE = "scan"


def _permanent(err: Exception) -> bool:
    return isinstance(err, HubguardError) and not (isinstance(err, RemoteError) and not isinstance(err, SourceNotFoundError))


def check_repo(repo_id: str, *, registry: "Registry", sha: str | None = None, token: str | None = None, top_k: int = 5,
               retries: int = 3, backoff_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Check `repo_id` (at `sha`, or its default branch now); a JSON-ready result that never raises.

    Keys: repo_id, sha, ok, status (ok | problems | unreadable), found_bases, problems, matches, rows (verdict-log
    rows), attempts, requests, bytes, seconds, error. Network failures are retried `retries` times with backoff; a
    repo that does not exist fails at once."""
    from hubguard.hooks.bot.report import verdict_rows
    from hubguard.hooks.check import check_upload
    from hubguard.weights.source import open_store

    start, attempts, requests, nbytes = time.perf_counter(), 0, 0, 0
    while True:
        attempts += 1
        store = None
        try:
            store = open_store(f"hf://{repo_id}" + (f"@{sha}" if sha else ""), token=token)
            report = check_upload(store.name, repo_id=repo_id, registry=registry, top_k=top_k, token=token, store=store)
        except Exception as err:  # noqa: BLE001 - one repo must never end a sweep; everything is reported
            if store is not None:
                requests, nbytes = requests + store.stats.requests, nbytes + store.stats.bytes_read
            error = str(err) if isinstance(err, HubguardError) else f"{type(err).__name__}: {err}"
            if _permanent(err) or attempts >= retries or not isinstance(err, HubguardError):
                return {"repo_id": repo_id, "sha": sha, "ok": False, "status": None, "attempts": attempts,
                        "requests": requests, "bytes": nbytes, "seconds": round(time.perf_counter() - start, 3),
                        "error": error, "permanent": _permanent(err)}
            sleep(backoff_s * 2 ** (attempts - 1))
            continue
        resolved = getattr(store, "sha", sha)
        requests, nbytes = requests + store.stats.requests, nbytes + store.stats.bytes_read
        return {
            "repo_id": repo_id, "sha": resolved, "ok": True, "status": report.status, "found_bases": report.found_bases,
            "problems": [p.code for p in report.problems], "reason": report.reason,
            "matches": [{k: m[k] for k in ("name", "verdict", "score", "z")} for m in report.matches],
            "rows": verdict_rows(repo_id=repo_id, revision=resolved, report=report, source=SOURCE),
            "attempts": attempts, "requests": requests, "bytes": nbytes,
            "seconds": round(time.perf_counter() - start, 3), "error": None,
        }
