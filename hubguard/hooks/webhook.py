"""The moderators' webhook bot: fingerprint every new model commit on the Hub and flag undeclared lineage.

A Hub webhook (https://huggingface.co/docs/hub/webhooks, scopes `repo` and `repo.content`, plus `discussion` for
Pull Requests) POSTs a JSON payload to `/webhooks/lineage`. The bot

1. checks `X-Webhook-Secret` (or `?secret=`) with a constant-time compare (401 missing, 403 wrong);
2. parses the payload (400 with a clear message when it is malformed) and ignores what is not a model commit
   (datasets, Spaces, deletions, config changes, comments, ...);
3. answers 202 at once and works in one background thread (the Hub expects a quick answer): it runs the
   pre-upload check (`hubguard.hooks.check.check_upload`) on `hf://{repo}@{sha}` — remote Range reads, the
   declared lineage from the repo's README.md, the registry search — and logs the verdict with
   `Registry.log_verdict(source="webhook")`;
4. acts when something is wrong (an undeclared derivative or a false `base_model`): a comment on the Pull Request
   that carried the commit, on the discussion the bot opened earlier for this repo, or a new discussion.

Idempotent on redelivery: a `repo@sha` already in the verdict log (source "webhook") or in the queue is not
processed again, so the verdict log is the bot's processed-set and survives restarts.
"""

from __future__ import annotations

import hmac
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import HookError, HubguardError
from hubguard.utils import get_logger

if TYPE_CHECKING:
    from hubguard.hooks.check import CheckReport
    from hubguard.registry import Registry

logger = get_logger(__name__)

WEBHOOK_PATH = "/webhooks/lineage"
SOURCE = "webhook"
_CONTENT_ACTIONS = {"create", "update"}
_KINDS = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list"}


# --- payload -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdatedRef:
    ref: str
    new_sha: str | None


@dataclass(frozen=True)
class WebhookEvent:
    """The parts of a Hub webhook payload the bot reads."""

    action: str
    scope: str
    repo_type: str
    repo_id: str
    head_sha: str | None = None
    discussion_num: int | None = None
    is_pull_request: bool = False
    updated_refs: tuple[UpdatedRef, ...] = ()


@dataclass(frozen=True)
class Target:
    """One commit to check, and where to report on it (a PR number, when the commit came with a Pull Request)."""

    repo_id: str
    revision: str  # a commit sha, or `refs/pr/N` until resolved
    pr_num: int | None = None

    @property
    def key(self) -> str:
        return f"{self.repo_id}@{self.revision}"


def _field(obj: dict[str, Any], name: str, kind: type, where: str, *, required: bool = True) -> Any:
    value = obj.get(name)
    if value is None:
        if required:
            raise HookError(f"Malformed webhook payload: '{where}.{name}' is missing. Send the Hub's webhook JSON.")
        return None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise HookError(f"Malformed webhook payload: '{where}.{name}' must be {_KINDS[kind]}, got {json.dumps(value)[:40]}.")
    return value


def parse_payload(body: "bytes | str | dict[str, Any]") -> WebhookEvent:
    """Parse a Hub webhook payload (raw JSON or a dict); `HookError` says what is malformed."""
    if isinstance(body, (bytes, str)):
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HookError(f"Malformed webhook payload: the body is not JSON ({err}).") from None
    else:
        data = body
    if not isinstance(data, dict):
        raise HookError(f"Malformed webhook payload: expected a JSON object, got {type(data).__name__}.")
    event = _field(data, "event", dict, "payload")
    repo = _field(data, "repo", dict, "payload")
    discussion = _field(data, "discussion", dict, "payload", required=False) or {}
    refs = _field(data, "updatedRefs", list, "payload", required=False) or []
    repo_id = _field(repo, "name", str, "repo")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HookError(f"Malformed webhook payload: repo.name must be 'org/name', got {repo_id!r}.")
    updated = []
    for i, r in enumerate(refs):
        if not isinstance(r, dict):
            raise HookError(f"Malformed webhook payload: updatedRefs[{i}] must be an object.")
        updated.append(UpdatedRef(ref=_field(r, "ref", str, f"updatedRefs[{i}]"),
                                  new_sha=_field(r, "newSha", str, f"updatedRefs[{i}]", required=False)))
    return WebhookEvent(
        action=_field(event, "action", str, "event"),
        scope=_field(event, "scope", str, "event"),
        repo_type=_field(repo, "type", str, "repo"),
        repo_id=repo_id,
        head_sha=_field(repo, "headSha", str, "repo", required=False),
        discussion_num=_field(discussion, "num", int, "discussion", required=False) if discussion else None,
        is_pull_request=bool(_field(discussion, "isPullRequest", bool, "discussion", required=False)) if discussion else False,
        updated_refs=tuple(updated),
    )


def targets_of(event: WebhookEvent) -> tuple[list[Target], str | None]:
    """The commits an event asks the bot to check, or ([], why it is ignored)."""
    if event.repo_type != "model":
        return [], f"not a model repo ({event.repo_type})"
    if event.scope == "discussion":
        if event.action == "create" and event.is_pull_request and event.discussion_num:
            return [Target(event.repo_id, f"refs/pr/{event.discussion_num}", pr_num=event.discussion_num)], None
        return [], "discussion event other than a new Pull Request"
    if event.scope not in {"repo", "repo.content"}:
        return [], f"scope {event.scope!r} carries no new weights"
    if event.action not in _CONTENT_ACTIONS:
        return [], f"action {event.action!r} carries no new weights"
    out: list[Target] = []
    for r in event.updated_refs:
        if r.new_sha is None:  # a deleted branch or tag
            continue
        pr = r.ref.removeprefix("refs/pr/")
        if r.ref.startswith("refs/pr/") and pr.isdigit():
            out.append(Target(event.repo_id, r.new_sha, pr_num=int(pr)))
        elif r.ref.startswith("refs/heads/"):
            out.append(Target(event.repo_id, r.new_sha))
    if not out and not event.updated_refs and event.head_sha:
        out.append(Target(event.repo_id, event.head_sha))
    if not out:
        return [], "no new commit in the payload (empty repo or tag-only change)"
    return list({t.key: t for t in out}.values()), None


def verify_secret(*, expected: str | None, given: str | None) -> int | None:
    """None when the request may pass; else the HTTP status to refuse it with (401 missing, 403 wrong)."""
    if expected is None:
        return None
    if not given:
        return 401
    return None if hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")) else 403


# --- the bot -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BotResult:
    """What the bot did with one commit."""

    repo_id: str
    revision: str
    status: str  # "ok" | "flagged" | "duplicate" | "error"
    message: str = ""
    action: str | None = None  # "comment" | "discussion" | None
    discussion_num: int | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)


class LineageBot:
    """Checks model commits against a registry and reports on the Hub.

    Args:
        registry: a `Registry`, a registry folder, or None (HUBGUARD_REGISTRY or the shipped registry).
        token: Hub token used to write comments and discussions (default HF_TOKEN). Reads use HF_TOKEN.
        endpoint: Hub URL (default HF_ENDPOINT or https://huggingface.co).
        secret: the webhook secret (default WEBHOOK_SECRET); None accepts unauthenticated requests.
        act: post comments/discussions (False: only log verdicts — a dry run).
        top_k: registry candidates to verify per commit.
    """

    def __init__(
        self,
        *,
        registry: "Registry | str | os.PathLike[str] | None" = None,
        token: str | None = None,
        endpoint: str | None = None,
        secret: str | None = None,
        act: bool = True,
        top_k: int = 5,
    ) -> None:
        from hubguard.registry import Registry

        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.token = token or constants.hf_token()
        self.endpoint = (endpoint or constants.hf_endpoint()).rstrip("/")
        self.secret = secret if secret is not None else constants.webhook_secret()
        self.act = act
        self.top_k = top_k
        self.results: list[BotResult] = []
        self._queue: queue.Queue[Target | None] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    # -- intake -----------------------------------------------------------------------------------------------

    def _api(self):  # noqa: ANN202 - HfApi
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token or False, library_name="hubguard")

    def already_processed(self, repo_id: str, sha: str) -> bool:
        return any(v.get("revision") == sha and v.get("source") == SOURCE for v in self.registry.verdicts(repo_id=repo_id))

    def submit(self, event: WebhookEvent) -> dict[str, Any]:
        """Queue the commits of an event; returns the JSON answer for the Hub."""
        targets, why = targets_of(event)
        if why is not None:
            return {"status": "ignored", "reason": why}
        queued, duplicate = [], []
        for t in targets:
            with self._lock:
                if t.key in self._pending or (not t.revision.startswith("refs/") and self.already_processed(t.repo_id, t.revision)):
                    duplicate.append(t.key)
                    continue
                self._pending.add(t.key)
            queued.append(t.key)
            self._ensure_worker()
            self._queue.put(t)
        return {"status": "queued" if queued else "duplicate", "queued": queued, "duplicate": duplicate}

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="hubguard-webhook-bot", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            target = self._queue.get()
            try:
                if target is None:
                    return
                result = self.process(target)
                self.results.append(result)
            finally:
                if target is not None:
                    with self._lock:
                        self._pending.discard(target.key)
                self._queue.task_done()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until every queued commit is processed (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return self._queue.unfinished_tasks == 0

    def close(self) -> None:
        """Stop the worker after the queued commits."""
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=60)

    # -- processing -------------------------------------------------------------------------------------------

    def resolve(self, target: Target) -> Target:
        """Pin `refs/pr/N` (or a branch) to its commit sha."""
        if len(target.revision) == 40 and all(c in "0123456789abcdef" for c in target.revision):
            return target
        info = self._api().model_info(target.repo_id, revision=target.revision)
        if not info.sha:
            raise HookError(f"{self.endpoint} returned no commit sha for {target.key}.")
        return Target(target.repo_id, info.sha, pr_num=target.pr_num)

    def process(self, target: Target) -> BotResult:
        """Check one commit, act on the Hub if needed, log the verdict. Never raises for hubguard or Hub errors."""
        try:
            target = self.resolve(target)
            if self.already_processed(target.repo_id, target.revision):
                return BotResult(target.repo_id, target.revision, "duplicate", "already checked")
            from hubguard.hooks.check import check_upload

            report = check_upload(f"hf://{target.key}", repo_id=target.repo_id, registry=self.registry, top_k=self.top_k)
        except Exception as err:  # noqa: BLE001 - a bad repo must not kill the worker; everything is reported
            msg = str(err) if isinstance(err, HubguardError) else f"{type(err).__name__}: {err}"
            logger.warning("webhook: %s failed: %s", target.key, msg)
            return BotResult(target.repo_id, target.revision, "error", msg)
        flagged = not report.agrees
        action, num, act_error = None, None, None
        if flagged and self.act:
            try:
                action, num = self._report_on_hub(target, report)
            except Exception as err:  # noqa: BLE001 - the Hub may refuse (rate limit, permissions); log it with the verdict
                act_error = f"{type(err).__name__}: {err}"
                logger.warning("webhook: could not post on %s: %s", target.repo_id, act_error)
        verdicts = self._log(target, report, action=action, discussion_num=num, act_error=act_error)
        msg = "; ".join(p.message for p in report.problems) or "declared lineage and weights agree"
        return BotResult(target.repo_id, target.revision, "flagged" if flagged else "ok", msg, action, num, verdicts)

    def _log(self, target: Target, report: "CheckReport", **details: Any) -> list[dict[str, Any]]:
        declared = report.declared["base_model"]
        common = dict(repo_id=target.repo_id, revision=target.revision, declared_base_model=declared,
                      declared_relation=report.declared.get("base_model_relation"), source=SOURCE)
        extra = {"status": report.status, "problems": [p.code for p in report.problems], "found_bases": report.found_bases,
                 "expected_relation": report.expected_relation, "pr_num": target.pr_num, "layers": report.layers,
                 **{k: v for k, v in details.items() if v is not None}}
        if report.status == "unreadable":
            return [self.registry.log_verdict(match=None, verdict="unreadable", flagged=True,
                                              reason=f"{report.reason} Fix: {report.fix}", details=extra, **common)]
        rows = []
        for m in report.matches:
            if m["verdict"] == "derivative":
                rows.append(self.registry.log_verdict(match=m["name"], verdict="derivative", score=m["score"], z=m["z"],
                                                      details=extra, **common))
        for p in report.problems:
            if p.code == "false_base_model":
                base = next((b for b in declared if f"'{b}'" in p.message), None)
                rows.append(self.registry.log_verdict(match=base, verdict="independent", flagged=True, reason=p.message,
                                                      details=extra, **common))
        if not rows:
            best = report.matches[0] if report.matches else None
            verdict = best["verdict"] if best and best["verdict"] != "derivative" else "independent"
            rows.append(self.registry.log_verdict(
                match=best["name"] if best else None, verdict=verdict, score=best["score"] if best else None,
                z=best["z"] if best else None, flagged=False, details=extra, **common))
        return rows

    def _previous_discussion(self, repo_id: str) -> int | None:
        for v in reversed(self.registry.verdicts(repo_id=repo_id)):
            if v.get("source") == SOURCE and v.get("details"):
                try:
                    d = json.loads(v["details"])
                except json.JSONDecodeError:
                    continue
                if d.get("action") == "discussion" and isinstance(d.get("discussion_num"), int):
                    return d["discussion_num"]
        return None

    def _report_on_hub(self, target: Target, report: "CheckReport") -> tuple[str, int]:
        api = self._api()
        text = format_report(target=target, report=report)
        if target.pr_num is not None:
            api.comment_discussion(target.repo_id, target.pr_num, text)
            return "comment", target.pr_num
        previous = self._previous_discussion(target.repo_id)
        if previous is not None:
            details = api.get_discussion_details(target.repo_id, previous)
            if details.status == "open":
                api.comment_discussion(target.repo_id, previous, text)
                return "comment", previous
        title = ("hubguard: these weights cannot be checked for lineage" if report.status == "unreadable" else
                 "hubguard: the model card's base_model disagrees with the weights")
        d = api.create_discussion(target.repo_id, title=title, description=text)
        return "discussion", d.num


def format_report(*, target: Target, report: "CheckReport") -> str:
    """The Markdown the bot posts: verdict, matches, problems and the fix."""
    declared = report.declared["base_model"]
    lines = [f"### hubguard lineage check of `{target.repo_id}` at `{target.revision[:10]}`", ""]
    errors = [p for p in report.problems if p.is_error]
    if report.status == "unreadable":
        lines += ["**Verdict: unreadable — hubguard could not fingerprint these weights, so their lineage is unverified.**",
                  "", f"Why: {report.reason}", "", f"**What to do:** {report.fix}", ""]
    elif any(p.code == "undeclared_derivative" for p in errors):
        lines.append(f"**Verdict: derivative of {', '.join(f'`{b}`' for b in report.found_bases)}, not declared in the model card.**")
    elif errors:
        lines.append("**Verdict: the declared `base_model` is not supported by the weights.**")
    else:
        lines.append("**Verdict: declared lineage and weights agree.**")
    lines += ["", f"Declared `base_model`: {', '.join(f'`{b}`' for b in declared) or '—'}"
              f" · relation: `{report.declared.get('base_model_relation') or '—'}`", ""]
    if report.matches:
        lines += ["| registry entry | verdict | score | z | false-positive rate |", "|---|---|---:|---:|---:|"]
        for m in report.matches:
            fpr = m.get("false_positive_rate")
            lines.append(f"| `{m['name']}` | {m['verdict']} | {m['score']:.1f} | {m['z']:.1f} | "
                         f"{'—' if fpr is None else f'{fpr:.2g}'} |")
        lines.append("")
    for p in report.problems:
        lines.append(f"- **{'error' if p.is_error else 'warning'}** `{p.code}`: {p.message}")
    lines += ["", "<sub>Score: 0–100 similarity of weight invariants (HuRef scale); z: against independently trained "
              "models. Posted by the hubguard webhook bot; a moderator will review. If this is wrong, reply here.</sub>"]
    return "\n".join(lines)


# --- HTTP --------------------------------------------------------------------------------------------------------


def make_handler(bot: LineageBot):  # noqa: ANN201 - an async FastAPI endpoint
    """The POST endpoint: secret check, parsing, queueing. Shared by `build_app` and `serve`."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    async def lineage_webhook(request: Request) -> JSONResponse:
        given = request.headers.get("x-webhook-secret") or request.query_params.get("secret")
        refused = verify_secret(expected=bot.secret, given=given)
        if refused == 401:
            return JSONResponse({"error": "X-Webhook-Secret header not set. Configure the webhook's secret."}, status_code=401)
        if refused == 403:
            return JSONResponse({"error": "Invalid webhook secret."}, status_code=403)
        try:
            event = parse_payload(await request.body())
        except HookError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        answer = bot.submit(event)
        return JSONResponse(answer, status_code=202 if answer["status"] == "queued" else 200)

    # FastAPI injects the request by its annotation; this module's annotations are strings (PEP 563) naming a local.
    lineage_webhook.__annotations__ = {"request": Request, "return": JSONResponse}
    return lineage_webhook


def build_app(bot: LineageBot):  # noqa: ANN201 - fastapi.FastAPI
    """A plain FastAPI app with the bot at `POST /webhooks/lineage` (for uvicorn or tests)."""
    from fastapi import FastAPI

    app = FastAPI(title="hubguard lineage bot")
    app.post(WEBHOOK_PATH)(make_handler(bot))
    return app


def serve(
    *,
    registry: "str | os.PathLike[str] | None" = None,
    secret: str | None = None,
    token: str | None = None,
    host: str = "0.0.0.0",  # noqa: S104 - a Space listens on all interfaces
    port: int = 7860,
    act: bool = True,
    prevent_thread_lock: bool = False,
) -> "ServedBot":
    """Host the bot with `huggingface_hub.WebhooksServer` (a Gradio landing page + `POST /webhooks/lineage`).

    Blocks unless `prevent_thread_lock`; then returns the running bot (call `.close()` to stop it).
    """
    try:
        import gradio as gr
        from huggingface_hub import WebhooksServer
    except ImportError as err:
        from hubguard.errors import MissingDependencyError

        raise MissingDependencyError.for_extra(package=err.name or "gradio", extra="space", purpose="The webhook bot") from None
    bot = LineageBot(registry=registry, secret=secret, token=token, act=act)
    if bot.secret is None:
        raise HookError("The webhook bot needs a secret: set WEBHOOK_SECRET (or --secret) to the secret configured in the "
                        "Hub's webhook settings, so that nobody else can make it post.")
    with gr.Blocks(title="hubguard lineage bot") as ui:
        gr.Markdown(f"## hubguard lineage bot\nPOST Hub webhooks (scopes `repo`, `repo.content`, `discussion`) to "
                    f"`{WEBHOOK_PATH}` with the configured secret. Registry: `{Path(bot.registry.path)}`.")
    server = WebhooksServer(ui=ui, webhook_secret=bot.secret)
    server.webhook_secret = None  # our handler checks it itself (constant time, 400 on malformed payloads)
    server.add_webhook(WEBHOOK_PATH.removeprefix("/webhooks/"))(make_handler(bot))
    server.launch(prevent_thread_lock=prevent_thread_lock, server_name=host, server_port=port, share=False)
    return ServedBot(bot=bot, ui=ui, url=(ui.local_url or f"http://{host}:{port}/").rstrip("/") + WEBHOOK_PATH)


@dataclass(frozen=True)
class ServedBot:
    """A bot hosted by `serve(prevent_thread_lock=True)`: `url` is its webhook URL."""

    bot: LineageBot
    ui: Any = field(repr=False)
    url: str = ""

    def close(self) -> None:
        self.bot.close()
        self.ui.close()
