"""The real bot process (`python -m hubguard.cli bot serve`), started as a moderator starts it, fed real HTTP
payloads; stopped with SIGTERM mid-queue and killed with SIGKILL, then restarted: nothing accepted is lost and
every repo gets exactly one discussion."""
# ruff: noqa: F811  (the hub_server fixture is imported, then requested by name)

from __future__ import annotations

import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from hubguard.hooks.bot import WEBHOOK_PATH
from hubguard.hooks.bot.journal import Journal
from hubguard.registry import Registry
from tests.support.botkit import SECRET, BotProcess, finetune, payload, wait_until
from tests.support.hubserver import HubServer, hub_server  # noqa: F401 - pytest fixture
from tests.test_webhook import registry, registry_dir  # noqa: F401


@pytest.fixture()
def derivatives(hub_server, family_models, tmp_path) -> dict[str, str]:
    """Six repos, each an undeclared derivative of BASE: repo -> commit sha."""
    return {f"someone/ft-{i}": hub_server.add_repo(f"someone/ft-{i}", finetune(family_models["llama"][0], tmp_path / f"ft{i}",
                                                                             seed=i))
            for i in range(6)}


def _assert_all_checked_once(hub: HubServer, registry: Registry, journal: Path, derivatives: dict[str, str]) -> None:
    j = Journal(journal)
    try:
        assert {t.state for t in j.tasks()} == {"done"}, j.counts()
        for repo, sha in derivatives.items():
            task = j.task(f"{repo}@{sha}")
            assert task is not None and task.outcome == "flagged", (repo, task)
            assert len(hub.discussions(repo)) == 1 and len(hub.comments(repo)) == 1, (repo, hub.discussions(repo))
            assert len(registry.verdicts(repo_id=repo, revision=sha)) == 1, repo
    finally:
        j.close()


def test_real_bot_process_answers_each_kind_of_request(hub_server, registry, family_models, tmp_path) -> None:
    journal = tmp_path / "journal.sqlite"
    repo = "someone/finetune"
    sha = hub_server.add_repo(repo, finetune(family_models["llama"][0], tmp_path / "ft"))
    bot = BotProcess(registry=registry.path, journal=journal, hub=hub_server, workdir=tmp_path)
    try:
        assert bot.post(payload(repo, sha), secret=None).status_code == 401
        assert bot.post(payload(repo, sha), secret="guess").status_code == 403
        assert bot.post(None, raw=b"{nope").status_code == 400
        assert bot.post(None, raw=b"[" * 5000 + b"]" * 5000).status_code == 400
        with socket.create_connection(("127.0.0.1", bot.port), timeout=10) as s:
            s.sendall(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: {SECRET}\r\n"
                      f"Content-Length: {50 << 20}\r\n\r\n".encode())
            assert s.recv(200).startswith(b"HTTP/1.1 413")
        assert bot.post(payload("someone/data", sha, repo_type="dataset")).json()["status"] == "ignored"
        assert bot.post(payload(repo, sha)).status_code == 202
        assert bot.post(payload(repo, sha)).json()["status"] == "duplicate"  # a replay
        # A burst of 200 distinct commits (that do not exist: each fails fast, no verdict) while a check runs.
        bodies = [payload(repo, f"{i:040x}") for i in range(200)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(bot.post, bodies))
        assert [a.status_code for a in answers] == [202] * 200
        wait_until(lambda: Journal(journal).open_count() == 0, timeout=300, what="the queue to drain")
        j = Journal(journal)
        assert j.counts() == {"done": 1, "failed": 200} and j.task(f"{repo}@{sha}").outcome == "flagged"
        assert len(hub_server.discussions(repo)) == 1 and len(registry.verdicts()) == 1
        assert httpx.get(f"http://127.0.0.1:{bot.port}/", timeout=5).json()["tasks"] == {"done": 1, "failed": 200}
    finally:
        bot.close()


def test_sigterm_mid_queue_then_restart_loses_nothing(hub_server, registry, derivatives, tmp_path) -> None:
    journal = tmp_path / "journal.sqlite"
    bot = BotProcess(registry=registry.path, journal=journal, hub=hub_server, workdir=tmp_path)
    for repo, sha in derivatives.items():
        assert bot.post(payload(repo, sha)).status_code == 202
    assert bot.stop(signal.SIGTERM) is not None
    left = Journal(journal).open_count()
    assert left > 0, "the bot finished the queue before SIGTERM; the test did not stop it mid-queue"
    bot = BotProcess(registry=registry.path, journal=journal, hub=hub_server, workdir=tmp_path)
    try:
        wait_until(lambda: Journal(journal).open_count() == 0, timeout=600, what="the resumed queue")
        for repo, sha in derivatives.items():  # redeliveries after the restart change nothing
            assert bot.post(payload(repo, sha)).json()["status"] == "duplicate"
    finally:
        bot.close()
    _assert_all_checked_once(hub_server, registry, journal, derivatives)


def test_kill_9_then_restart_loses_nothing(hub_server, registry, derivatives, tmp_path) -> None:
    import psutil

    journal = tmp_path / "journal.sqlite"
    bot = BotProcess(registry=registry.path, journal=journal, hub=hub_server, workdir=tmp_path)
    for repo, sha in derivatives.items():
        assert bot.post(payload(repo, sha)).status_code == 202
    wait_until(lambda: Journal(journal).counts().get("done", 0) >= 1, timeout=300, what="a first finished commit")
    workers = bot.worker_pids()
    assert workers
    bot.stop(signal.SIGKILL)
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in workers), timeout=30, what="the worker to die with the bot")
    assert Journal(journal).open_count() > 0
    bot = BotProcess(registry=registry.path, journal=journal, hub=hub_server, workdir=tmp_path)
    try:
        wait_until(lambda: Journal(journal).open_count() == 0, timeout=600, what="the resumed queue")
    finally:
        bot.close()
    _assert_all_checked_once(hub_server, registry, journal, derivatives)
