"""The webhook bot, end to end: a real Hub-shaped server, real HfApi writes, real HTTP POSTs to the running bot."""
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
import torch
from safetensors.torch import load_file, save_file

from hubguard.errors import HookError
from hubguard.hooks.webhook import WEBHOOK_PATH, LineageBot, build_app, parse_payload, targets_of
from hubguard.registry import Registry
from tests.support.hubserver import HubServer, hub_server  # noqa: F401 - pytest fixture

BASE = "org/base-llama"
SECRET = "s3cret-webhook"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finetune(src: Path, dst: Path, *, card: str | None = None, noise: float = 0.2) -> Path:
    """A copy whose matrices moved by `noise` of their scale (a fine-tune), with an optional model card header."""
    shutil.copytree(src, dst)
    st = dst / "model.safetensors"
    tensors = load_file(str(st))
    g = torch.Generator().manual_seed(0)
    for k, t in tensors.items():
        if t.dim() == 2:
            tensors[k] = t + noise * t.std() * torch.randn(t.shape, generator=g)
    save_file(tensors, str(st))
    if card is not None:
        (dst / "README.md").write_text(f"---\n{card}\n---\n\n# A model\n")
    return dst


def payload(repo: str, sha: str | None, *, repo_type: str = "model", scope: str = "repo.content", action: str = "update",
            ref: str = "refs/heads/main", discussion: dict | None = None) -> dict:
    """A payload shaped like the Hub's (webhook version 3)."""
    body = {
        "event": {"action": action, "scope": scope},
        "repo": {"type": repo_type, "name": repo, "id": "6399f58518721fdd27fc9ca9", "private": False, "headSha": sha,
                 "owner": {"id": "628b753283ef59b5be89e937"},
                 "url": {"web": f"https://huggingface.co/{repo}", "api": f"https://huggingface.co/api/models/{repo}"}},
        "webhook": {"id": "6390e855e30d9209411de93b", "version": 3},
    }
    if scope == "repo.content" and sha:
        body["updatedRefs"] = [{"ref": ref, "oldSha": None, "newSha": sha}]
    if discussion is not None:
        body["discussion"] = discussion
    return body


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
        self.port = _free_port()
        config = uvicorn.Config(build_app(bot), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
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


@pytest.fixture()
def running(hub_server: HubServer, registry: Registry) -> Iterator[RunningBot]:
    bot = LineageBot(registry=registry, token=HubServer.TOKEN, secret=SECRET)
    rb = RunningBot(bot)
    try:
        yield rb
    finally:
        rb.stop()


def test_secret_is_required_and_checked(running) -> None:
    body = payload("someone/model", "a" * 40, repo_type="dataset")
    missing = running.post(body, secret=None)
    assert missing.status_code == 401 and "X-Webhook-Secret" in missing.json()["error"]
    wrong = running.post(body, secret="guess")
    assert wrong.status_code == 403 and wrong.json() == {"error": "Invalid webhook secret."}
    # The Hub may also send the secret as a query parameter.
    ok = httpx.post(running.url + f"?secret={SECRET}", json=body, timeout=30)
    assert ok.status_code == 200 and ok.json()["status"] == "ignored"


def test_dataset_and_irrelevant_events_are_ignored(running) -> None:
    r = running.post(payload("someone/data", "a" * 40, repo_type="dataset"))
    assert r.status_code == 200 and r.json() == {"status": "ignored", "reason": "not a model repo (dataset)"}
    for body in (payload("someone/m", "a" * 40, action="delete"), payload("someone/m", "a" * 40, scope="repo.config"),
                 payload("someone/m", "a" * 40, scope="discussion.comment", discussion={"num": 3, "isPullRequest": False})):
        r = running.post(body)
        assert r.status_code == 200 and r.json()["status"] == "ignored", r.json()
    assert running.bot.registry.verdicts() == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (json.dumps({"event": {"action": "update", "scope": "repo"}}).encode(), "'payload.repo' is missing"),
        (json.dumps({"event": {"action": "update", "scope": "repo"}, "repo": {"type": "model"}}).encode(), "'repo.name' is missing"),
        (json.dumps({"event": {"action": "update", "scope": "repo"}, "repo": {"type": "model", "name": "noslash"}}).encode(),
         "repo.name must be 'org/name'"),
        (json.dumps(payload("a/b", "c" * 40) | {"updatedRefs": [{"ref": 5}]}).encode(), "'updatedRefs[0].ref' must be a string, got 5"),
    ],
)
def test_malformed_payload_is_a_400_with_a_clear_message(running, raw, message) -> None:
    r = running.post(None, raw=raw)
    assert r.status_code == 400
    assert message in r.json()["error"] and r.json()["error"].startswith("Malformed webhook payload")


def test_undeclared_derivative_opens_a_discussion_and_is_flagged(running, hub_server, family_models, tmp_path) -> None:
    repo = "someone/finetune"
    sha = hub_server.add_repo(repo, _finetune(family_models["llama"][0], tmp_path / "ft"))
    r = running.post(payload(repo, sha))
    assert r.status_code == 202 and r.json() == {"status": "queued", "queued": [f"{repo}@{sha}"], "duplicate": []}
    assert running.bot.wait_idle(60)
    [result] = running.bot.results
    assert result.status == "flagged" and result.action == "discussion", result
    [disc] = hub_server.discussions(repo)
    assert not disc["isPullRequest"] and "base_model" in disc["title"]
    [text] = hub_server.comments(repo)
    assert f"derivative of `{BASE}`, not declared" in text and sha[:10] in text and "undeclared_derivative" in text
    [v] = running.bot.registry.verdicts(repo_id=repo)
    assert v["flagged"] and v["verdict"] == "derivative" and v["match"] == BASE
    assert v["source"] == "webhook" and v["revision"] == sha and v["verdict"] == "derivative" and v["score"] > 60
    assert json.loads(v["details"])["discussion_num"] == disc["num"]
    assert [f["repo_id"] for f in running.bot.registry.flagged()] == [repo]
    # A later bad commit to the same repo goes to the bot's open discussion, not a new one.
    sha2 = hub_server.add_repo(repo, _finetune(family_models["llama"][0], tmp_path / "ft2", noise=0.25))
    assert running.post(payload(repo, sha2)).status_code == 202 and running.bot.wait_idle(60)
    assert len(hub_server.discussions(repo)) == 1 and len(hub_server.comments(repo)) == 2
    assert running.bot.results[-1].action == "comment"


def test_declared_derivative_posts_nothing_and_logs_the_verdict(running, hub_server, family_models, tmp_path) -> None:
    repo = "someone/honest-finetune"
    folder = _finetune(family_models["llama"][0], tmp_path / "ft", card=f"base_model: {BASE}\nbase_model_relation: finetune")
    sha = hub_server.add_repo(repo, folder)
    assert running.post(payload(repo, sha)).status_code == 202 and running.bot.wait_idle(60)
    assert running.bot.results[-1].status == "ok" and running.bot.results[-1].action is None
    assert hub_server.discussions(repo) == []
    assert hub_server.requests(method="POST") == []
    [v] = running.bot.registry.verdicts(repo_id=repo)
    assert v["verdict"] == "derivative" and not v["flagged"] and v["declared_base_model"] == BASE
    assert running.bot.registry.derivatives_of(BASE)[0]["repo_id"] == repo


def test_redelivery_is_processed_once_even_after_a_restart(running, hub_server, family_models, tmp_path) -> None:
    repo = "someone/finetune"
    sha = hub_server.add_repo(repo, _finetune(family_models["llama"][0], tmp_path / "ft"))
    first, second = running.post(payload(repo, sha)), running.post(payload(repo, sha))
    assert first.json()["status"] == "queued"
    assert second.status_code == 200 and second.json() == {"status": "duplicate", "queued": [], "duplicate": [f"{repo}@{sha}"]}
    assert running.bot.wait_idle(60)
    # A new bot process on the same registry knows the commit from the verdict log.
    again = RunningBot(LineageBot(registry=running.bot.registry.path, token=HubServer.TOKEN, secret=SECRET))
    try:
        assert again.post(payload(repo, sha)).json()["status"] == "duplicate"
    finally:
        again.stop()
    assert len(running.bot.registry.verdicts(repo_id=repo)) == 1 and len(hub_server.discussions(repo)) == 1


def test_pull_request_gets_a_comment(running, hub_server, family_models, tmp_path) -> None:
    from huggingface_hub import HfApi

    repo = "someone/model"
    hub_server.add_repo(repo, family_models["llama"][1])  # main: an independent model, nothing to say
    pr = HfApi(endpoint=hub_server.endpoint, token=HubServer.TOKEN).create_discussion(repo, "Update weights", pull_request=True)
    sha = hub_server.add_repo(repo, _finetune(family_models["llama"][0], tmp_path / "ft"), revision=f"refs/pr/{pr.num}")
    body = payload(repo, None, scope="discussion", action="create", discussion={"num": pr.num, "isPullRequest": True})
    assert running.post(body).status_code == 202 and running.bot.wait_idle(60)
    result = running.bot.results[-1]
    assert (result.status, result.action, result.discussion_num, result.revision) == ("flagged", "comment", pr.num, sha)
    [disc] = hub_server.discussions(repo)
    assert disc["isPullRequest"] and "undeclared_derivative" in disc["events"][-1]["data"]["latest"]["raw"]


def test_unreadable_repo_is_reported_not_fatal(running, hub_server) -> None:
    r = running.post(payload("someone/missing", "b" * 40))
    assert r.status_code == 202 and running.bot.wait_idle(30)
    result = running.bot.results[-1]
    assert result.status == "error" and "someone/missing" in result.message
    assert running.bot.registry.verdicts() == []  # not marked processed: a redelivery retries


def test_parse_and_targets() -> None:
    ev = parse_payload(json.dumps(payload("o/n", "d" * 40, ref="refs/pr/7")))
    assert (ev.scope, ev.repo_id, ev.head_sha) == ("repo.content", "o/n", "d" * 40)
    [t] = targets_of(ev)[0]
    assert (t.revision, t.pr_num) == ("d" * 40, 7)
    created = parse_payload(payload("o/n", "e" * 40, scope="repo", action="create"))
    assert [t.revision for t in targets_of(created)[0]] == ["e" * 40]
    empty = parse_payload(payload("o/n", None, scope="repo", action="create"))
    assert targets_of(empty) == ([], "no new commit in the payload (empty repo or tag-only change)")
    with pytest.raises(HookError, match="'discussion.num' must be an integer"):
        parse_payload(payload("o/n", None, scope="discussion", discussion={"num": "3", "isPullRequest": True}))


def test_serve_refuses_to_run_without_a_secret(monkeypatch, registry) -> None:
    from typer.testing import CliRunner

    from hubguard.cli import app

    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    out = CliRunner().invoke(app, ["bot", "serve", "--registry", str(registry.path), "--port", str(_free_port())])
    assert out.exit_code == 2 and "needs a secret" in out.output


def test_serve_hosts_the_bot_with_webhooks_server(registry) -> None:
    """The deployment path: huggingface_hub.WebhooksServer (a Gradio app) with the bot at /webhooks/lineage."""
    from hubguard.hooks.webhook import serve

    served = serve(registry=registry.path, secret=SECRET, host="127.0.0.1", port=_free_port(), prevent_thread_lock=True)
    try:
        assert served.url.endswith(WEBHOOK_PATH)
        body = payload("someone/data", "a" * 40, repo_type="dataset")
        assert httpx.post(served.url, json=body, headers={"X-Webhook-Secret": "nope"}, timeout=30).status_code == 403
        ok = httpx.post(served.url, json=body, headers={"X-Webhook-Secret": SECRET}, timeout=30)
        assert ok.status_code == 200 and ok.json()["status"] == "ignored"
        bad = httpx.post(served.url, content=b"{", headers={"X-Webhook-Secret": SECRET}, timeout=30)
        assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    finally:
        served.close()
