"""The webhook bot in one process (LineageBot behind uvicorn): a real Hub-shaped server, real HfApi writes, real
HTTP POSTs. The real `hubguard bot serve` process is tested in tests/test_bot_process.py."""
# ruff: noqa: F811  (the hub_server fixture is imported, then requested by name)

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hubguard.errors import HookError
from hubguard.hooks.bot import WEBHOOK_PATH, LineageBot, parse_payload, targets_of
from hubguard.hooks.bot.discussions import TITLE_FLAGGED
from hubguard.registry import Registry
from tests.support.botkit import SECRET, finetune, free_port, payload
from tests.support.hubserver import HubServer, hub_server  # noqa: F401 - pytest fixture

BASE = "org/base-llama"


@pytest.fixture(scope="module")
def registry_dir(family_models, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("registry")
    Registry(path).add(family_models["llama"][0], name=BASE, family="llama", license="apache-2.0")
    return path


@pytest.fixture()
def registry(registry_dir, tmp_path) -> Registry:
    """A fresh copy per test (each test writes its own verdict log)."""
    dst = tmp_path / "registry"
    shutil.copytree(registry_dir, dst, ignore=shutil.ignore_patterns(".cache"))
    return Registry(dst)


class RunningBot:
    def __init__(self, bot: LineageBot) -> None:
        import uvicorn

        self.bot = bot
        self.port = free_port()
        config = uvicorn.Config(bot.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    def post(self, body: object, *, secret: str | None = SECRET, raw: bytes | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Webhook-Secret"] = secret
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(self.url, content=content, headers=headers, timeout=30)

    def stop(self) -> None:
        self.bot.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_bot(registry: Registry | Path, journal: Path, **kwargs) -> LineageBot:
    return LineageBot(registry=registry, journal=journal, token=HubServer.TOKEN, secret=SECRET, retry_base_s=0.2, **kwargs)


@pytest.fixture()
def running(hub_server: HubServer, registry: Registry, tmp_path: Path) -> Iterator[RunningBot]:
    rb = RunningBot(make_bot(registry, tmp_path / "journal.sqlite"))
    try:
        yield rb
    finally:
        rb.stop()


def test_secret_comes_from_the_header_only(running) -> None:
    body = payload("someone/model", "a" * 40, repo_type="dataset")
    missing = running.post(body, secret=None)
    assert missing.status_code == 401 and "X-Webhook-Secret" in missing.json()["error"]
    wrong = running.post(body, secret="guess")
    assert wrong.status_code == 403 and wrong.json() == {"error": "Invalid webhook secret."}
    query = httpx.post(running.url + f"?secret={SECRET}", json=body, timeout=30)  # a leaked URL is not a credential
    assert query.status_code == 401
    assert running.post(body).json()["status"] == "ignored"


def test_dataset_and_irrelevant_events_are_ignored(running) -> None:
    r = running.post(payload("someone/data", "a" * 40, repo_type="dataset"))
    assert r.status_code == 200 and r.json() == {"status": "ignored", "reason": "not a model repo (dataset)"}
    for body in (payload("someone/m", "a" * 40, action="delete"), payload("someone/m", "a" * 40, scope="repo.config"),
                 payload("someone/m", "a" * 40, scope="discussion.comment", discussion={"num": 3, "isPullRequest": False})):
        r = running.post(body)
        assert r.status_code == 200 and r.json()["status"] == "ignored", r.json()
    assert running.bot.registry.verdicts() == [] and running.bot.journal.tasks() == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (json.dumps({"event": {"action": "update", "scope": "repo"}}).encode(), "'payload.repo' is missing"),
        (json.dumps({"event": {"action": "update", "scope": "repo"}, "repo": {"type": "model"}}).encode(), "'repo.name' is missing"),
        (json.dumps({"event": {"action": "update", "scope": "repo"}, "repo": {"type": "model", "name": "noslash"}}).encode(),
         "repo.name must be 'org/name'"),
        (json.dumps(payload("a/b", "c" * 40) | {"updatedRefs": [{"ref": 5}]}).encode(), "'updatedRefs[0].ref' must be a string, got 5"),
        (b'{"event": ' * 40 + b"1" + b"}" * 40, "nests deeper than 16 levels"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper"),
        (json.dumps(payload("a/b", "c" * 40)).replace('"repo"', '"event"', 1).encode(), "appears twice"),
    ],
)
def test_malformed_or_nested_payload_is_a_400_with_a_clear_message(running, raw, message) -> None:
    r = running.post(None, raw=raw)
    assert r.status_code == 400
    assert message in r.json()["error"] and r.json()["error"].startswith("Malformed webhook payload")


def test_oversized_bodies_are_refused_unread(running) -> None:
    big = running.post(None, raw=b" " * ((1 << 20) + 1))
    assert big.status_code == 413
    # A chunked body (no Content-Length) is cut off once it passes the limit.
    chunks = (b"x" * 65536 for _ in range(40))
    chunked = httpx.post(running.url, content=chunks, headers={"X-Webhook-Secret": SECRET}, timeout=30)
    assert chunked.status_code == 413
    # A 50 MB Content-Length is refused from the headers alone: the body is never sent.
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as s:
        s.sendall(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: {SECRET}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {50 << 20}\r\n\r\n".encode())
        assert s.recv(200).startswith(b"HTTP/1.1 413")
    assert running.bot.journal.tasks() == []


def test_undeclared_derivative_opens_one_discussion_later_commits_update_it(running, hub_server, family_models, tmp_path) -> None:
    repo = "someone/finetune"
    sha = hub_server.add_repo(repo, finetune(family_models["llama"][0], tmp_path / "ft"))
    r = running.post(payload(repo, sha))
    assert r.status_code == 202 and r.json() == {"status": "queued", "queued": [f"{repo}@{sha}"], "duplicate": []}
    assert running.bot.wait_idle(120)
    task = running.bot.journal.task(f"{repo}@{sha}")
    assert task.state == "done" and task.outcome == "flagged" and task.result["action"] == "discussion", task
    [disc] = hub_server.discussions(repo)
    assert not disc["isPullRequest"] and disc["title"] == TITLE_FLAGGED
    [text] = hub_server.comments(repo)
    assert f"derivative of `{BASE}`, not declared" in text and sha[:10] in text and "undeclared_derivative" in text
    assert "<!-- hubguard-lineage-bot repo=someone/finetune sig=" in text
    [v] = running.bot.registry.verdicts(repo_id=repo)
    assert v["flagged"] and v["verdict"] == "derivative" and v["match"] == BASE and v["source"] == "webhook"
    assert v["revision"] == sha and v["score"] > 60
    assert [f["repo_id"] for f in running.bot.registry.flagged()] == [repo]
    # A later bad commit goes to the bot's discussion, not a new one; a fix gets one "fixed" comment.
    sha2 = hub_server.add_repo(repo, finetune(family_models["llama"][0], tmp_path / "ft2", noise=0.25))
    assert running.post(payload(repo, sha2)).status_code == 202 and running.bot.wait_idle(120)
    assert len(hub_server.discussions(repo)) == 1 and len(hub_server.comments(repo)) == 2
    fixed = finetune(family_models["llama"][0], tmp_path / "ft3", card=f"base_model: {BASE}")
    sha3 = hub_server.add_repo(repo, fixed)
    assert running.post(payload(repo, sha3)).status_code == 202 and running.bot.wait_idle(120)
    comments = hub_server.comments(repo)
    assert len(hub_server.discussions(repo)) == 1 and len(comments) == 3 and "fixed in this commit" in comments[-1]


def test_declared_derivative_posts_nothing_and_logs_the_verdict(running, hub_server, family_models, tmp_path) -> None:
    repo = "someone/honest-finetune"
    folder = finetune(family_models["llama"][0], tmp_path / "ft", card=f"base_model: {BASE}\nbase_model_relation: finetune")
    sha = hub_server.add_repo(repo, folder)
    assert running.post(payload(repo, sha)).status_code == 202 and running.bot.wait_idle(120)
    assert running.bot.journal.task(f"{repo}@{sha}").outcome == "ok"
    assert hub_server.discussions(repo) == [] and hub_server.requests(method="POST") == []
    [v] = running.bot.registry.verdicts(repo_id=repo)
    assert v["verdict"] == "derivative" and not v["flagged"] and v["declared_base_model"] == BASE
    assert running.bot.registry.derivatives_of(BASE)[0]["repo_id"] == repo


def test_redelivery_is_processed_once_even_after_a_restart(running, hub_server, family_models, tmp_path) -> None:
    repo = "someone/finetune"
    sha = hub_server.add_repo(repo, finetune(family_models["llama"][0], tmp_path / "ft"))
    first, second = running.post(payload(repo, sha)), running.post(payload(repo, sha))
    assert first.json()["status"] == "queued"
    assert second.status_code == 200 and second.json() == {"status": "duplicate", "queued": [], "duplicate": [f"{repo}@{sha}"]}
    assert running.post(payload(repo.upper(), sha)).json()["status"] == "duplicate"  # the Hub's ids ignore case
    assert running.bot.wait_idle(120)
    again = RunningBot(make_bot(running.bot.registry.path, running.bot.journal.path, worker=False))
    try:
        assert again.post(payload(repo, sha)).json()["status"] == "duplicate"
    finally:
        again.stop()
    assert len(running.bot.registry.verdicts(repo_id=repo)) == 1 and len(hub_server.discussions(repo)) == 1


def test_a_lost_journal_finds_the_bots_discussion_by_its_signed_marker(hub_server, registry, family_models, tmp_path) -> None:
    from huggingface_hub import HfApi

    repo = "someone/finetune"
    api = HfApi(endpoint=hub_server.endpoint, token=HubServer.TOKEN)
    sha = hub_server.add_repo(repo, finetune(family_models["llama"][0], tmp_path / "ft"))
    bot = make_bot(registry, tmp_path / "j1.sqlite")
    assert bot.submit(parse_payload(payload(repo, sha)))["status"] == "queued" and bot.wait_idle(120)
    bot.close()
    [mine] = hub_server.discussions(repo)
    # The owner opens a look-alike with a forged marker; then the bot starts over with an empty journal.
    api.create_discussion(repo, title=TITLE_FLAGGED, description="<!-- hubguard-lineage-bot repo=someone/finetune sig="
                          + "0" * 24 + " -->")
    sha2 = hub_server.add_repo(repo, finetune(family_models["llama"][0], tmp_path / "ft2", noise=0.25))
    bot = make_bot(registry, tmp_path / "j2.sqlite")
    assert bot.submit(parse_payload(payload(repo, sha2)))["status"] == "queued" and bot.wait_idle(120)
    bot.close()
    discussions = hub_server.discussions(repo)
    assert len(discussions) == 2 and len(discussions[0]["events"]) == 2 and len(discussions[1]["events"]) == 1
    assert bot.journal.discussion(repo) == mine["num"]


def test_the_verdict_is_logged_before_the_post_and_a_failing_hub_is_retried(running, hub_server, family_models, tmp_path) -> None:
    repo = "someone/finetune"
    sha = hub_server.add_repo(repo, finetune(family_models["llama"][0], tmp_path / "ft"))
    hub_server.inject("status", times=1000, match=f"/api/models/{repo}/discussions", method="POST", status=503)
    assert running.post(payload(repo, sha)).status_code == 202
    deadline = time.monotonic() + 120
    while running.bot.journal.task(f"{repo}@{sha}").state != "logged" or not running.bot.journal.task(f"{repo}@{sha}").error:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert len(running.bot.registry.verdicts(repo_id=repo)) == 1 and hub_server.discussions(repo) == []
    hub_server.clear_faults()
    assert running.bot.wait_idle(120)
    assert len(hub_server.discussions(repo)) == 1 and len(running.bot.registry.verdicts(repo_id=repo)) == 1


def test_pull_request_gets_a_comment(running, hub_server, family_models, tmp_path) -> None:
    from huggingface_hub import HfApi

    repo = "someone/model"
    hub_server.add_repo(repo, family_models["llama"][1])  # main: an independent model, nothing to say
    pr = HfApi(endpoint=hub_server.endpoint, token=HubServer.TOKEN).create_discussion(repo, "Update weights", pull_request=True)
    sha = hub_server.add_repo(repo, finetune(family_models["llama"][0], tmp_path / "ft"), revision=f"refs/pr/{pr.num}")
    body = payload(repo, None, scope="discussion", action="create", discussion={"num": pr.num, "isPullRequest": True})
    assert running.post(body).status_code == 202 and running.bot.wait_idle(120)
    task = running.bot.journal.task(f"{repo}@refs/pr/{pr.num}")
    assert (task.outcome, task.result["action"], task.result["discussion_num"], task.sha) == ("flagged", "comment", pr.num, sha)
    [disc] = hub_server.discussions(repo)
    assert disc["isPullRequest"] and "undeclared_derivative" in disc["events"][-1]["data"]["latest"]["raw"]


def test_missing_repo_fails_without_a_verdict_and_a_redelivery_retries(running, hub_server) -> None:
    r = running.post(payload("someone/missing", "b" * 40))
    assert r.status_code == 202 and running.bot.wait_idle(60)
    task = running.bot.journal.task("someone/missing@" + "b" * 40)
    assert task.state == "failed" and "someone/missing" in task.error
    assert running.bot.registry.verdicts() == []
    assert running.post(payload("someone/missing", "b" * 40)).json()["status"] == "queued"


def test_a_full_queue_answers_503_with_retry_after(hub_server, registry, tmp_path) -> None:
    rb = RunningBot(make_bot(registry, tmp_path / "journal.sqlite", worker=False, max_queue=2))
    try:
        assert [rb.post(payload(f"someone/m{i}", f"{i:040x}")).status_code for i in range(2)] == [202, 202]
        full = rb.post(payload("someone/m9", "9" * 40))
        assert full.status_code == 503 and full.headers["Retry-After"] == "30" and "limit 2" in full.json()["error"]
        assert rb.post(payload("someone/m0", f"{0:040x}")).status_code == 200  # a redelivery is still answered
    finally:
        rb.stop()


def test_parse_and_targets() -> None:
    ev = parse_payload(json.dumps(payload("o/n", "d" * 40, ref="refs/pr/7")))
    assert (ev.scope, ev.repo_id, ev.head_sha) == ("repo.content", "o/n", "d" * 40)
    [t] = targets_of(ev)[0]
    assert (t.revision, t.pr_num, t.key) == ("d" * 40, 7, "o/n@" + "d" * 40)
    created = parse_payload(payload("o/n", "e" * 40, scope="repo", action="create"))
    assert [t.revision for t in targets_of(created)[0]] == ["e" * 40]
    empty = parse_payload(payload("o/n", None, scope="repo", action="create"))
    assert targets_of(empty) == ([], "no new commit in the payload (empty repo or tag-only change)")
    assert targets_of(parse_payload(payload("O/N", "not-a-sha")))[0] == []
    with pytest.raises(HookError, match="'discussion.num' must be an integer"):
        parse_payload(payload("o/n", None, scope="discussion", discussion={"num": "3", "isPullRequest": True}))


def test_serve_refuses_to_run_without_a_secret(monkeypatch, registry, tmp_path) -> None:
    from typer.testing import CliRunner

    from hubguard.cli import app

    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    out = CliRunner().invoke(app, ["bot", "serve", "--registry", str(registry.path), "--port", str(free_port()),
                                   "--journal", str(tmp_path / "j.sqlite")])
    assert out.exit_code == 2 and "needs a secret" in out.output


def test_serve_gradio_hosts_the_bot_with_webhooks_server(registry, tmp_path) -> None:
    """The Space path: huggingface_hub.WebhooksServer (a Gradio app) with the bot at /webhooks/lineage."""
    from hubguard.hooks.bot import BotSettings, serve_gradio

    settings = BotSettings(journal=str(tmp_path / "j.sqlite"), secret=SECRET, registry=str(registry.path))
    served = serve_gradio(settings, host="127.0.0.1", port=free_port(), prevent_thread_lock=True)
    try:
        assert served.url.endswith(WEBHOOK_PATH)
        body = payload("someone/data", "a" * 40, repo_type="dataset")
        assert httpx.post(served.url, json=body, headers={"X-Webhook-Secret": "nope"}, timeout=30).status_code == 403
        ok = httpx.post(served.url, json=body, headers={"X-Webhook-Secret": SECRET}, timeout=30)
        assert ok.status_code == 200 and ok.json()["status"] == "ignored"
        bad = httpx.post(served.url, content=b"{", headers={"X-Webhook-Secret": SECRET}, timeout=30)
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    finally:
        served.close()
