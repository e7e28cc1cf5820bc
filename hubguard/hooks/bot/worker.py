"""The bot's worker: claims journaled commits one at a time, checks them, logs the verdict, then reports on the Hub.

    queued --check_upload(hf://repo@sha)--> verdict rows in the registry's log --> logged --post--> done

The verdict rows are written before anything is posted, and a commit whose rows are already in the log (a worker
killed after logging) is not logged twice (`has_verdict`: an index probe). Network failures are retried with
exponential backoff up to `max_attempts`, then the task fails with its error (a redelivery re-queues it); a repo
or commit that does not exist fails at once. A check never takes the worker down.

It runs as a thread (`LineageBot`, tests) or as its own process (`python -m hubguard.hooks.bot.worker`, started
by `hubguard bot serve`, so fingerprinting never holds the GIL of the process answering the Hub); a process
started with `--parent-pid` dies with its parent, even when the parent is killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubguard.errors import HubguardError, RemoteError, SourceNotFoundError
from hubguard.hooks.bot.journal import Journal, Task, worker_lock
from hubguard.hooks.bot.payload import Target, is_sha
from hubguard.utils import get_logger

if TYPE_CHECKING:
    from hubguard.hooks.check import CheckReport
    from hubguard.registry import Registry

logger = get_logger(__name__)

SOURCE = "webhook"


@dataclass(frozen=True)
class WorkerConfig:
    journal: str
    registry: str | None = None
    endpoint: str | None = None
    token: str | None = None
    key: str = ""  # signs the hidden markers of the bot's posts (the webhook secret)
    act: bool = True
    top_k: int = 5
    max_attempts: int = 4
    retry_base_s: float = 5.0
    poll_s: float = 0.1


class Worker:
    """Processes the journal's tasks until `stop` is set."""

    def __init__(self, config: WorkerConfig, *, registry: "Registry | None" = None) -> None:
        from hubguard import constants
        from hubguard.registry import Registry

        self.config = config
        self.endpoint = (config.endpoint or constants.hf_endpoint()).rstrip("/")
        self.token = config.token or constants.hf_token()
        self.registry = registry if registry is not None else Registry(config.registry)
        self.journal = Journal(config.journal)
        self.processed = 0

    def api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token or False, library_name="hubguard")

    def run(self, stop: threading.Event) -> None:
        with worker_lock(self.config.journal, stop=stop) as held:
            if not held:
                return
            recovered = self.journal.recover()
            if recovered:
                logger.info("bot worker: resuming %d commits a previous worker left unfinished", recovered)
            while not stop.is_set():
                task = self.journal.claim()
                if task is None:
                    stop.wait(self.config.poll_s)
                    continue
                self.handle(task)
                self.processed += 1

    def handle(self, task: Task) -> None:
        """One step of a task (a check, then the post); never raises."""
        try:
            if task.state == "checking":
                task = self.check(task)
                if task is None:
                    return
            self.publish(task)
        except Exception as err:  # noqa: BLE001 - a bug on one commit must not stop the bot
            logger.exception("bot worker: %s failed unexpectedly", task.key)
            self.journal.update(task.key, state="failed", error=f"internal error: {type(err).__name__}: {err}")

    def _retry_or_fail(self, task: Task, err: HubguardError) -> None:
        if isinstance(err, RemoteError) and not isinstance(err, SourceNotFoundError) and task.attempts < self.config.max_attempts:
            delay = self.config.retry_base_s * 2 ** (task.attempts - 1)
            logger.info("bot worker: %s failed (%s); retrying in %.0f s", task.key, err, delay)
            self.journal.update(task.key, state="queued", delay_s=delay, error=str(err))
        else:
            logger.warning("bot worker: %s failed: %s", task.key, err)
            self.journal.update(task.key, state="failed", outcome="error", error=str(err))

    def resolve(self, target: Target) -> str:
        """The commit sha of `target` (a PR ref or branch is pinned to its head now)."""
        if target.pinned:
            return target.revision
        info = self.api().model_info(target.repo_id, revision=target.revision)
        if not is_sha(info.sha):
            raise RemoteError(f"{self.endpoint} returned no commit sha for {target.repo_id}@{target.revision}.")
        return info.sha  # type: ignore[return-value]

    def check_commit(self, target: Target) -> tuple[str, "CheckReport", list[dict[str, Any]]]:
        """Resolve, check and log one commit (its rows are logged once, however often it is checked): (sha, report,
        the verdict rows in the log). Raises HubguardError (or huggingface_hub's errors on resolving)."""
        from hubguard.hooks.bot.report import verdict_rows
        from hubguard.hooks.check import check_upload
        from hubguard.registry.verdicts import has_verdict, log_verdicts

        sha = self.resolve(target)
        report = check_upload(f"hf://{target.repo_id}@{sha}", repo_id=target.repo_id, registry=self.registry,
                              top_k=self.config.top_k, token=self.token)
        if has_verdict(self.registry, repo_id=target.repo_id, revision=sha, source=SOURCE):
            rows = self.registry.verdicts(repo_id=target.repo_id, revision=sha, source=SOURCE)
        else:
            rows = log_verdicts(self.registry, verdict_rows(repo_id=target.repo_id, revision=sha, report=report,
                                                            source=SOURCE, extra={"pr_num": target.pr_num}))
        return sha, report, rows

    def check(self, task: Task) -> Task | None:
        """Check the commit and log its verdict rows; the task becomes `logged` (or is retried / failed)."""
        try:
            sha, report, _ = self.check_commit(Target(task.repo_id, task.revision, task.pr_num))
        except HubguardError as err:
            self._retry_or_fail(task, err)
            return None
        except Exception as err:  # noqa: BLE001 - huggingface_hub raises its own HTTP errors on resolve
            self._retry_or_fail(task, _as_remote_error(err, task))
            return None
        summary = {"status": report.status, "found_bases": report.found_bases,
                   "problems": [p.code for p in report.problems], "reason": report.reason, "fix": report.fix}
        self.journal.update(task.key, state="logged", sha=sha, outcome=outcome_of(report), result=summary,
                            report=_report_json(report))
        return self.journal.task(task.key)

    def publish(self, task: Task) -> None:
        """Post the logged report (idempotent: see `discussions.Reporter`); the task becomes `done`."""
        from hubguard.hooks.bot.discussions import Reporter

        result = dict(task.result)
        if self.config.act and task.report is not None:
            report = _report_from_json(task.report)
            try:
                action, num = Reporter(api=self.api(), journal=self.journal, key=self.config.key).post(
                    target=Target(task.repo_id, task.sha or task.revision, task.pr_num), report=report)
            except Exception as err:  # noqa: BLE001 - the Hub may refuse (rate limit, permissions, down): retry, then give up
                error = f"{type(err).__name__}: {err}"
                if task.attempts < self.config.max_attempts:
                    self.journal.update(task.key, state="logged", delay_s=self.config.retry_base_s * 2 ** task.attempts,
                                        attempts=task.attempts + 1, error=error)
                else:
                    self.journal.update(task.key, state="done", error=f"could not post on the Hub: {error}",
                                        result={**result, "action": None})
                return
            result.update(action=action, discussion_num=num)
        self.journal.update(task.key, state="done", result=result)


def outcome_of(report: "CheckReport") -> str:
    return "ok" if report.status == "ok" else ("unreadable" if report.status == "unreadable" else "flagged")


def _as_remote_error(err: Exception, task: Task) -> HubguardError:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError)):
        return SourceNotFoundError(f"{task.repo_id}@{task.revision} does not exist on the Hub (any more): {err}")
    return RemoteError(f"Resolving {task.repo_id}@{task.revision} failed: {type(err).__name__}: {err}")


def _report_json(report: Any) -> str:
    """The parts of a CheckReport the post needs, as JSON (kept in the journal between check and post)."""
    import json

    data = report.to_dict()
    return json.dumps({k: data[k] for k in ("folder", "repo_id", "status", "declared", "matches", "found_bases",
                                           "expected_relation", "problems", "reason", "fix", "error")}, default=str)


def _report_from_json(text: str) -> Any:
    import json

    from hubguard.hooks.check import CheckReport, Problem

    data = json.loads(text)
    data["problems"] = [Problem(p["code"], p["message"]) for p in data["problems"]]
    return CheckReport(**data)


# --- the worker process ------------------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG), then check it has not already."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hubguard.hooks.bot.worker",
                                     description="The hubguard bot's worker process (started by `hubguard bot serve`).")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--registry")
    parser.add_argument("--endpoint")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--cache-max-bytes", type=int)
    parser.add_argument("--retry-base-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    if args.cache_max_bytes is not None:
        from hubguard.weights.remote_cache import set_max_bytes

        set_max_bytes(args.cache_max_bytes)
    import torch

    torch.set_num_threads(1)  # the intake process needs the other core
    key = sys.stdin.readline().strip()  # the signing key comes on stdin, never on the command line
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    config = WorkerConfig(journal=args.journal, registry=args.registry, endpoint=args.endpoint, key=key,
                          act=not args.dry_run, top_k=args.top_k, retry_base_s=args.retry_base_s)
    Worker(config).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
