"""`LineageBot`: the whole bot in one process (intake + a worker thread), for tests, notebooks and embedding.

`hubguard bot serve` runs the same parts with the worker in its own process (`hubguard.hooks.bot.server`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.hooks.bot.journal import Intake, Journal, QueueFull
from hubguard.hooks.bot.payload import Target, WebhookEvent, targets_of
from hubguard.hooks.bot.worker import Worker, WorkerConfig

if TYPE_CHECKING:
    from hubguard.hooks.check import CheckReport
    from hubguard.registry import Registry


@dataclass(frozen=True)
class ProcessedCommit:
    """What `LineageBot.process` did with one commit."""

    repo_id: str
    revision: str
    outcome: str  # ok | flagged | unreadable
    report: "CheckReport" = field(repr=False)
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # its rows in the verdict log
    action: str | None = None  # "discussion" | "comment" | None
    discussion_num: int | None = None


class LineageBot:
    """Checks model commits against a registry and reports on the Hub.

    Args:
        journal: the SQLite journal file (default HUBGUARD_HOME/bot/journal.sqlite).
        registry: a `Registry`, a registry folder, or None (HUBGUARD_REGISTRY or the shipped registry).
        token: Hub token used to write comments and discussions (default HF_TOKEN).
        endpoint: Hub URL (default HF_ENDPOINT or https://huggingface.co).
        secret: the webhook secret (default WEBHOOK_SECRET); it also signs the bot's hidden markers.
        act: post comments/discussions (False: only log verdicts — a dry run).
        max_queue: unfinished commits the journal may hold before intake answers 503.
        worker: start the worker thread (False: only journal events).
    """

    def __init__(self, *, journal: "str | os.PathLike[str] | None" = None, registry: "Registry | str | os.PathLike[str] | None" = None,
                 token: str | None = None, endpoint: str | None = None, secret: str | None = None, act: bool = True,
                 top_k: int = 5, max_queue: int = 1000, worker: bool = True, retry_base_s: float = 5.0) -> None:
        from hubguard.registry import Registry

        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.secret = secret if secret is not None else constants.webhook_secret()
        path = os.fspath(journal) if journal is not None else str(constants.HUBGUARD_HOME / "bot" / "journal.sqlite")
        self.journal = Journal(path)
        self.intake = Intake(self.journal, max_open=max_queue)
        config = WorkerConfig(journal=path, endpoint=endpoint, token=token, key=self.secret or "", act=act, top_k=top_k,
                              retry_base_s=retry_base_s)
        self.worker = Worker(config, registry=self.registry)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if worker:
            self.start()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.worker.run, args=(self._stop,), name="hubguard-bot-worker",
                                            daemon=True)
            self._thread.start()

    def submit(self, event: WebhookEvent) -> dict[str, Any]:
        """Journal the commits of an event; the answer the HTTP endpoint would give (without the status code)."""
        targets, why = targets_of(event)
        if why is not None:
            return {"status": "ignored", "reason": why}
        try:
            queued, duplicate = self.intake.accept(targets, {"repo_id": event.repo_id, "scope": event.scope,
                                                             "action": event.action})
        except QueueFull as err:
            return {"status": "full", "error": str(err)}
        return {"status": "queued" if queued else "duplicate", "queued": queued, "duplicate": duplicate}

    def process(self, target: Target) -> ProcessedCommit:
        """Check one commit now, in this thread: resolve, check, log the verdict rows, and report on the Hub unless a
        dry run. Raises what the check raises (a missing repo, a failed network read)."""
        from hubguard.hooks.bot.discussions import Reporter
        from hubguard.hooks.bot.worker import outcome_of

        sha, report, rows = self.worker.check_commit(target)
        action, num = None, None
        if self.worker.config.act:
            action, num = Reporter(api=self.worker.api(), journal=self.journal, key=self.secret or "").post(
                target=Target(target.repo_id, sha, target.pr_num), report=report)
        return ProcessedCommit(repo_id=target.repo_id, revision=sha, outcome=outcome_of(report), report=report,
                               verdicts=rows, action=action, discussion_num=num)

    def app(self) -> Any:
        """A FastAPI app serving this bot's intake (for uvicorn)."""
        from hubguard.hooks.bot.server import build_app

        return build_app(intake=self.intake, secret=self.secret)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no commit is waiting (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.journal.open_count() == 0:
                return True
            time.sleep(0.05)
        return self.journal.open_count() == 0

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.intake.close()
