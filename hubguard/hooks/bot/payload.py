"""Hub webhook payloads: the secret check, the bounded parser, and which commits an event asks the bot to check.

A Hub webhook (https://huggingface.co/docs/hub/webhooks, scopes `repo` and `repo.content`, plus `discussion` for
Pull Requests) POSTs JSON with the secret in the `X-Webhook-Secret` header (verbatim, no HMAC). Bodies are
untrusted: at most `MAX_BODY_BYTES`, nested at most `MAX_DEPTH` levels, parsed by `loads_untrusted`, and every
field the bot reads is type-checked; anything else is a `HookError` that says what is malformed.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from hubguard.errors import HookError
from hubguard.utils.jsonsafe import loads_untrusted

MAX_BODY_BYTES = 1 << 20  # Hub payloads are a few KB; anything near this is not one
MAX_DEPTH = 16  # a Hub payload nests 4 levels
_CONTENT_ACTIONS = {"create", "update"}
_KINDS = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list"}
_SHA_HEX = set("0123456789abcdef")


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
        """The journal's key: repo ids compare case-insensitively, as the Hub resolves them."""
        return f"{self.repo_id.casefold()}@{self.revision}"

    @property
    def pinned(self) -> bool:
        return is_sha(self.revision)


def is_sha(value: str | None) -> bool:
    return isinstance(value, str) and len(value) == 40 and set(value) <= _SHA_HEX


def _field(obj: dict[str, Any], name: str, kind: type, where: str, *, required: bool = True) -> Any:
    value = obj.get(name)
    if value is None:
        if required:
            raise HookError(f"Malformed webhook payload: '{where}.{name}' is missing. Send the Hub's webhook JSON.")
        return None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise HookError(f"Malformed webhook payload: '{where}.{name}' must be {_KINDS[kind]}, got {json.dumps(value)[:40]}.")
    return value


def parse_body(body: "bytes | str") -> dict[str, Any]:
    """The JSON object of a webhook body (size, depth, duplicate keys and numbers bounded)."""
    data = loads_untrusted(body, what="Malformed webhook payload: the body", error=HookError, max_bytes=MAX_BODY_BYTES,
                           max_depth=MAX_DEPTH, fix="Send the Hub's webhook JSON.")
    if not isinstance(data, dict):
        raise HookError(f"Malformed webhook payload: expected a JSON object, got {type(data).__name__}.")
    return data


def parse_payload(body: "bytes | str | dict[str, Any]") -> WebhookEvent:
    """Parse a Hub webhook payload (raw JSON or a dict); `HookError` says what is malformed."""
    data = parse_body(body) if isinstance(body, (bytes, str)) else body
    if not isinstance(data, dict):
        raise HookError(f"Malformed webhook payload: expected a JSON object, got {type(data).__name__}.")
    event = _field(data, "event", dict, "payload")
    repo = _field(data, "repo", dict, "payload")
    discussion = _field(data, "discussion", dict, "payload", required=False) or {}
    refs = _field(data, "updatedRefs", list, "payload", required=False) or []
    repo_id = _field(repo, "name", str, "repo")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or len(repo_id) > 200:
        raise HookError(f"Malformed webhook payload: repo.name must be 'org/name', got {repo_id[:80]!r}.")
    if len(refs) > 100:
        raise HookError(f"Malformed webhook payload: {len(refs)} updatedRefs; a Hub push updates a few.")
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
        if r.new_sha is None or not is_sha(r.new_sha):  # a deleted branch or tag (or not a commit id)
            continue
        pr = r.ref.removeprefix("refs/pr/")
        if r.ref.startswith("refs/pr/") and pr.isdigit():
            out.append(Target(event.repo_id, r.new_sha, pr_num=int(pr)))
        elif r.ref.startswith("refs/heads/"):
            out.append(Target(event.repo_id, r.new_sha))
    if not out and not event.updated_refs and is_sha(event.head_sha):
        out.append(Target(event.repo_id, event.head_sha))  # type: ignore[arg-type]
    if not out:
        return [], "no new commit in the payload (empty repo or tag-only change)"
    return list({t.key: t for t in out}.values()), None


def verify_secret(*, expected: str | None, given: str | None) -> int | None:
    """None when the request may pass; else the HTTP status to refuse it with (401 missing, 403 wrong).
    Constant time in the secret's content."""
    if expected is None:
        return None
    if not given:
        return 401
    return None if hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")) else 403
