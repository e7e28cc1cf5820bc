"""Where a scan's checks run: in this process (`local`) or on Ray (`ray`), both through `check_repo`.

The Ray engine is a Ray Data pipeline: the repos as a dataset, `map_batches` over a fixed pool of `ScanActor`s
(each keeps its registry loaded, its HTTP session warm and its range cache, for every repo it checks), and the
results streamed back to the driver, which alone writes the journal and the verdict log. Every actor draws
request tokens from one `RateLimiterActor` per Hub token (a named actor), so N workers share one budget. An actor
that dies is restarted and its repo retried; a repo that keeps failing comes back as failed.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hubguard.hooks.scan.journal import ScanItem
from hubguard.hooks.scan.limiter import RateLimiter, limited_session, token_id
from hubguard.utils import get_logger

logger = get_logger(__name__)

ENGINES = ("local", "ray")
TASK_RETRIES = 3  # a repo whose worker dies this many times more is reported as failed


@dataclass(frozen=True)
class ScanOptions:
    """What every worker needs (plain values: they travel to Ray actors)."""

    registry: str | None
    endpoint: str
    token: str | None = None
    top_k: int = 5
    retries: int = 3
    backoff_s: float = 2.0
    plan: str = "free"
    share: float = 0.9
    torch_threads: int = 1


def _registry(options: ScanOptions) -> Any:
    from hubguard.registry import Registry

    return Registry(options.registry)


def run_local(items: list[ScanItem], options: ScanOptions, *, limiter: RateLimiter | None = None) -> Iterator[dict[str, Any]]:
    """Check the repos one after the other in this process."""
    import torch

    from hubguard.hooks.scan.repo import check_repo

    limiter = limiter or RateLimiter(plan=options.plan, share=options.share)
    registry = _registry(options)
    threads = torch.get_num_threads()
    torch.set_num_threads(options.torch_threads)
    try:
        with limited_session(acquire=limiter.acquire, pause=limiter.pause, endpoint=options.endpoint):
            for item in items:
                yield check_repo(item.repo_id, sha=item.sha, registry=registry, token=options.token, top_k=options.top_k,
                                 retries=options.retries, backoff_s=options.backoff_s)
    finally:
        torch.set_num_threads(threads)


# --- Ray ---------------------------------------------------------------------------------------------------------


class RateLimiterState(RateLimiter):
    """The limiter behind the Ray actor: callers get a wait time instead of blocking the actor."""

    def take(self, bucket: str) -> float:
        return self.try_acquire(bucket)


class ScanActor:
    """A Ray Data worker: warm registry, HTTP session and range cache; checks one repo per call."""

    def __init__(self, options: ScanOptions, limiter: Any) -> None:
        import time

        import ray
        import torch

        from hubguard.hooks.scan.repo import check_repo

        torch.set_num_threads(options.torch_threads)
        self.options, self._check, self.registry = options, check_repo, _registry(options)

        def acquire(bucket: str) -> None:
            while (wait := ray.get(limiter.take.remote(bucket))) > 0:
                time.sleep(min(wait, 5.0))

        self._session = limited_session(acquire=acquire, pause=lambda s: limiter.pause.remote(s), endpoint=options.endpoint)
        self._session.__enter__()  # for the actor's lifetime: every request of every check goes through the limiter

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        out = []
        for repo_id, sha in zip(batch["repo_id"], batch["sha"]):
            result = self._check(str(repo_id), sha=str(sha) or None, registry=self.registry, token=self.options.token,
                                 top_k=self.options.top_k, retries=self.options.retries, backoff_s=self.options.backoff_s)
            out.append(json.dumps(result, default=str))
        return {"result": out}


def run_ray(items: list[ScanItem], options: ScanOptions, *, workers: int, address: str | None = None) -> Iterator[dict[str, Any]]:
    """Check the repos on a Ray Data pipeline with `workers` actors sharing one rate limiter."""
    from hubguard.lineage.batch import connect_ray, import_ray

    ray = import_ray("hubguard scan --engine ray")
    started = connect_ray(ray, address=address, num_cpus=max(workers, 1) + 1 if address is None else None)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_stats_logs = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        limiter = ray.remote(num_cpus=0)(RateLimiterState).options(
            name=f"hubguard-rate-limiter-{token_id(options.token)}", get_if_exists=True, max_concurrency=64,
        ).remote(plan=options.plan, share=options.share)
        ds = ray.data.from_items([{"repo_id": i.repo_id, "sha": i.sha or ""} for i in items],
                                 override_num_blocks=max(1, len(items)))  # one block per repo: a lost block is one repo
        ctx.max_errored_blocks = len(items)  # a repo whose worker keeps dying is reported, not the end of the sweep
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Ray 2.6x names no parameter for task retries yet
            results = ds.map_batches(ScanActor, fn_constructor_kwargs={"options": options, "limiter": limiter},
                                     batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                                     max_restarts=-1, max_task_retries=TASK_RETRIES)
        seen: set[str] = set()
        for row in results.iter_rows():
            result = json.loads(row["result"])
            seen.add(result["repo_id"])
            yield result
        for item in items:
            if item.repo_id not in seen:
                yield {"repo_id": item.repo_id, "sha": item.sha, "ok": False, "status": None, "attempts": TASK_RETRIES + 1,
                       "requests": 0, "bytes": 0, "seconds": 0.0, "permanent": False,
                       "error": f"the Ray worker checking it died {TASK_RETRIES + 1} times (out of memory, or killed)"}
    finally:
        if started:
            ray.shutdown()
