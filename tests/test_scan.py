"""`hubguard scan` against the local Hub-shaped server: the verdict log, the journal and resuming, --since, the
shared rate limiter, and the Ray engine (real local Ray) giving the local engine's results; a scan whose worker and
then driver are killed resumes without redoing finished repos."""
# ruff: noqa: F811  (the hub_server fixture is imported, then requested by name)

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from hubguard.cli import app
from hubguard.hooks.scan import RateLimiter, scan
from hubguard.hooks.scan.journal import ScanJournal
from hubguard.hooks.scan.limiter import WINDOW_S, bucket_of
from tests.support.botkit import child_env, finetune
from tests.support.hubserver import HubServer, hub_server  # noqa: F401 - pytest fixture
from tests.test_webhook import BASE, registry, registry_dir  # noqa: F401


@pytest.fixture()
def repos(hub_server, family_models, tmp_path) -> dict[str, str]:
    """Undeclared derivatives, one declared derivative and one independent model: repo -> sha."""
    out = {f"someone/ft-{i}": hub_server.add_repo(f"someone/ft-{i}", finetune(family_models["llama"][0], tmp_path / f"ft{i}",
                                                                            seed=i), created_at=f"2026-11-0{i + 1}T00:00:00.000Z")
           for i in range(3)}
    honest = finetune(family_models["llama"][0], tmp_path / "honest", card=f"base_model: {BASE}", seed=9)
    out["someone/honest"] = hub_server.add_repo("someone/honest", honest, created_at="2026-10-01T00:00:00.000Z")
    out["other/independent"] = hub_server.add_repo("other/independent", family_models["llama"][1],
                                                   created_at="2025-01-01T00:00:00.000Z")
    return out


def _requests_for(hub: HubServer, repo: str) -> int:
    return len([r for r in hub.requests() if repo in r.path])


def test_local_scan_logs_verdicts_reports_failures_and_resumes(hub_server, registry, repos, tmp_path) -> None:
    journal = tmp_path / "scan.sqlite"
    summary = scan(repos=[*repos, "someone/missing"], journal=journal, registry=registry, retries=2, backoff_s=0.01)
    assert summary.counts == {"done": 5, "failed": 1} and summary.checked == 6
    assert sorted(summary.flagged) == ["someone/ft-0", "someone/ft-1", "someone/ft-2"]
    assert summary.failed[0]["repo_id"] == "someone/missing" and "not found" in summary.failed[0]["error"]
    for repo, sha in repos.items():
        [row] = registry.verdicts(repo_id=repo, source="scan")
        assert row["revision"] == sha
        assert row["flagged"] == repo.startswith("someone/ft-")
    assert registry.verdicts(repo_id="someone/honest")[0]["verdict"] == "derivative"
    hub_server.clear_log()
    again = scan(repos=list(repos), journal=journal, registry=registry, retries=1, backoff_s=0.01)
    assert again.checked == 1 and again.counts == {"done": 5, "failed": 1}  # only the failed repo was tried again
    assert all(_requests_for(hub_server, repo) == 0 for repo in repos)
    assert len(registry.verdicts(source="scan")) == 5


def test_since_scans_the_models_created_since_a_date(hub_server, registry, repos, tmp_path) -> None:
    res = CliRunner().invoke(app, ["scan", "--since", "2026-10-01", "--journal", str(tmp_path / "j.sqlite"),
                                   "--registry", str(registry.path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["checked"] == 4 and out["counts"] == {"done": 4}
    assert "other/independent" not in {r["repo_id"] for r in registry.verdicts(source="scan")}
    bad = CliRunner().invoke(app, ["scan", "--since", "last tuesday", "--journal", str(tmp_path / "k.sqlite")])
    assert bad.exit_code == 2 and "not a date" in bad.output


def test_rate_limiter_keeps_every_window_within_the_budget() -> None:
    now = [0.0]
    limiter = RateLimiter(budgets={"api": 100, "resolvers": 400}, share=1.0, clock=lambda: now[0],
                          sleep=lambda s: now.__setitem__(0, now[0] + s))
    stamps = []
    for _ in range(450):
        limiter.acquire("api")
        stamps.append(now[0])
    worst = max(sum(1 for t in stamps if start <= t < start + WINDOW_S) for start in stamps)
    assert worst <= 100 and stamps[-1] > 3 * WINDOW_S
    limiter.pause(50)
    before = now[0]
    limiter.acquire("resolvers")
    assert now[0] - before >= 50
    assert bucket_of("http://127.0.0.1:5/org/m/resolve/abc/config.json", endpoint="http://127.0.0.1:5") == "resolvers"
    assert bucket_of("http://127.0.0.1:5/api/models/org/m", endpoint="http://127.0.0.1:5") == "api"
    assert bucket_of("http://localhost:5/_cdn/x", endpoint="http://127.0.0.1:5") is None  # the CDN is not counted


def test_ray_engine_matches_local_and_shares_one_limiter(hub_server, registry, repos, tmp_path, monkeypatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the Ray workers read the environment, not the patched constants
    local = scan(repos=list(repos), journal=tmp_path / "local.sqlite", registry=registry)
    hub_server.clear_log()
    monkeypatch.setenv("HUBGUARD_REMOTE_CACHE", str(tmp_path / "cold-cache"))  # as cold as the local run's was
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20)
    try:
        distributed = scan(repos=list(repos), engine="ray", workers=2, journal=tmp_path / "ray.sqlite", registry=registry)
        from hubguard.hooks.scan.limiter import token_id

        stats = ray.get(ray.get_actor(f"hubguard-rate-limiter-{token_id(None)}").stats.remote())
    finally:
        ray.shutdown()
    assert distributed.counts == local.counts == {"done": len(repos)}
    keep = ("repo_id", "sha", "status", "found_bases", "problems", "matches", "requests", "bytes")
    by_repo = {r["repo_id"]: {k: r[k] for k in keep} for r in ScanJournal(tmp_path / "local.sqlite").results()}
    assert {r["repo_id"]: {k: r[k] for k in keep} for r in ScanJournal(tmp_path / "ray.sqlite").results()} == by_repo
    hub_requests = [r for r in hub_server.requests() if not r.path.startswith("/_cdn/")]
    assert sum(stats["granted"].values()) == len(hub_requests) > 0  # every Hub request went through the one limiter
    assert stats["budgets_per_5min"] == {"api": 450, "resolvers": 2700}  # anonymous plan, 90%


_DRIVER = """
import sys
from hubguard.cli.main import main
sys.argv = ["hubguard", "scan", *sys.argv[1:]]
main()
"""


def test_a_scan_whose_worker_then_driver_are_killed_resumes_without_redoing_finished_repos(
        hub_server, registry, family_models, tmp_path) -> None:
    import psutil

    names = [f"someone/kill-{i}" for i in range(10)]
    for i, name in enumerate(names):
        hub_server.add_repo(name, finetune(family_models["llama"][0], tmp_path / f"k{i}", seed=100 + i))
    journal = tmp_path / "scan.sqlite"
    env = child_env(hub_server, tmp_path, HF_TOKEN="")
    args = [*names, "--engine", "ray", "--workers", "2", "--journal", str(journal), "--registry", str(registry.path)]

    def done() -> set[str]:
        return {r["repo_id"] for r in ScanJournal(journal).results(state="done")}

    def wait(pred, what: str, timeout: float = 600) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline and driver.poll() is None, f"timed out waiting for {what}"
            time.sleep(0.3)

    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    family = []
    try:
        wait(lambda: len(done()) >= 2, "two finished repos")
        family = psutil.Process(driver.pid).children(recursive=True)
        actors = [p for p in family if "ScanActor" in " ".join(p.cmdline())]
        assert actors, [" ".join(p.cmdline())[:80] for p in family]
        actors[0].kill()  # a worker dies mid-scan: Ray restarts it, its repo is retried
        before = len(done())
        wait(lambda: len(done()) >= before + 2, "progress after the worker was killed")
        driver.kill()  # then the driver dies
        driver.wait(timeout=30)
    finally:
        for p in family:  # the Ray processes that driver started, by their ids
            if p.is_running():
                p.kill()
        if driver.poll() is None:
            driver.kill()
        log.close()
    finished = done()
    assert 0 < len(finished) < len(names), finished
    hub_server.clear_log()
    summary = scan(repos=names, journal=journal, registry=registry)
    assert summary.checked == len(names) - len(finished) and summary.counts == {"done": len(names)}
    assert all(_requests_for(hub_server, repo) == 0 for repo in finished)  # finished repos were not redone
    for name in names:
        assert len(registry.verdicts(repo_id=name, source="scan")) == 1, name
