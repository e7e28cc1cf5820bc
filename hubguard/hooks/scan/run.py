"""`scan`: sweep Hub repos for undeclared lineage — a list of repo ids, or every model created since a date.

The driver puts the repos in the scan journal (`--since` through `HfApi.list_models(sort="created_at")`, newest
first, until a repo older than the date), runs the engine over those not done yet, and for each result writes the
verdict rows to the registry's verdict log (source "scan"), then marks the repo done. Killing the driver or a worker
loses at most the repos in flight; the next run on the same journal checks only what is left (failed repos
included).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import HookError
from hubguard.hooks.scan.engines import ENGINES, ScanOptions, run_local, run_ray
from hubguard.hooks.scan.journal import ScanItem, ScanJournal
from hubguard.hooks.scan.limiter import PLANS, RateLimiter, limited_session
from hubguard.hooks.scan.repo import SOURCE
from hubguard.utils import get_logger, progress

if TYPE_CHECKING:
    from hubguard.registry import Registry

logger = get_logger(__name__)
MAX_LISTED = 1_000_000
SINCE_FIX = "Write it as YYYY-MM-DD or an ISO 8601 time."
NOTHING_FIX = "Pass repo ids, or --since DATE to scan the models created since then."


@dataclass(frozen=True)
class ScanSummary:
    journal: str
    checked: int
    counts: dict[str, int]
    flagged: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"journal": self.journal, "checked": self.checked, "counts": self.counts, "flagged": self.flagged,
                "failed": self.failed}


def parse_since(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HookError(f"--since {value!r} is not a date. {SINCE_FIX}", fix=SINCE_FIX) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def list_since(since: datetime, *, endpoint: str, token: str | None, limiter: RateLimiter) -> list[ScanItem]:
    """Model repos created at or after `since`, with their head commit (one listing, rate-limited)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token or False, library_name="hubguard")
    out: list[ScanItem] = []
    with limited_session(acquire=limiter.acquire, pause=limiter.pause, endpoint=endpoint):
        for info in api.list_models(sort="created_at", expand=["createdAt", "sha"]):
            created = info.created_at
            if created is not None and created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
            if created is not None and created < since:
                break  # newest first: everything after this is older
            out.append(ScanItem(info.id, info.sha))
            if len(out) >= MAX_LISTED:
                break
    return out


def _record(result: dict[str, Any], *, journal: ScanJournal, registry: "Registry") -> None:
    """Verdict rows first, then the journal (a crash in between re-checks the repo; its rows are not doubled)."""
    from hubguard.registry.verdicts import has_verdict, log_verdicts

    if result["ok"] and not has_verdict(registry, repo_id=result["repo_id"], revision=result["sha"], source=SOURCE):
        log_verdicts(registry, result["rows"])
    journal.finish(result)


def scan(
    *,
    repos: Iterable[str] = (),
    since: str | None = None,
    engine: str = "local",
    journal: "str | os.PathLike[str] | None" = None,
    registry: "Registry | str | os.PathLike[str] | None" = None,
    token: str | None = None,
    endpoint: str | None = None,
    workers: int = 2,
    address: str | None = None,
    plan: str | None = None,
    share: float = 0.9,
    retries: int = 3,
    backoff_s: float = 2.0,
    top_k: int = 5,
) -> ScanSummary:
    """Scan `repos` (and/or the models created since `since`) with `engine`; resumable from `journal`."""
    from hubguard.registry import Registry

    if engine not in ENGINES:
        raise HookError(f"Unknown engine {engine!r}. Use one of: {', '.join(ENGINES)}.", fix=f"Use one of: {', '.join(ENGINES)}.")
    token = token or constants.hf_token()
    plan = plan or ("free" if token else "anonymous")
    if plan not in PLANS:
        raise HookError(f"Unknown plan {plan!r}. Use one of: {', '.join(PLANS)}.", fix=f"Use one of: {', '.join(PLANS)}.")
    endpoint = (endpoint or constants.hf_endpoint()).rstrip("/")
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    reg.make_writable()
    j = ScanJournal(journal or constants.HUBGUARD_HOME / "scan" / "journal.sqlite")
    limiter = RateLimiter(plan=plan, share=share)
    items = [ScanItem(r) for r in repos]
    if since is not None:
        items += list_since(parse_since(since), endpoint=endpoint, token=token, limiter=limiter)
    added = j.add(items)
    todo = j.todo()
    logger.info("scan: %d repos added, %d to check (journal %s)", added, len(todo), j.path)
    if not todo and not j.counts():
        raise HookError(f"Nothing to scan. {NOTHING_FIX}", fix=NOTHING_FIX)
    options = ScanOptions(registry=str(reg.path), endpoint=endpoint, token=token, top_k=top_k, retries=retries,
                          backoff_s=backoff_s, plan=plan, share=share)
    results = run_local(todo, options, limiter=limiter) if engine == "local" else \
        run_ray(todo, options, workers=workers, address=address)
    checked, flagged = 0, []
    try:
        for result in progress(results, desc=f"scan ({engine})", total=len(todo), unit="repo"):
            _record(result, journal=j, registry=reg)
            checked += 1
            if result["ok"] and result["status"] != "ok":
                flagged.append(result["repo_id"])
        failed = [{"repo_id": r["repo_id"], "attempts": r["attempts"], "error": r["error"]} for r in j.results(state="failed")]
        return ScanSummary(journal=str(j.path), checked=checked, counts=j.counts(), flagged=flagged, failed=failed)
    finally:
        j.close()
