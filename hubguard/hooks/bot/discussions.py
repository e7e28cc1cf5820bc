"""Where the bot reports on the Hub: one discussion per repo, found or created by a hidden signed marker.

The discussion's first message carries `<!-- hubguard-lineage-bot repo=... sig=... -->` and every report the bot
posts carries `<!-- hubguard-report sha=... status=... sig=... -->`, signed with an HMAC of the bot's key (the
webhook secret), so a marker copied or forged by the repo's owner is not taken for the bot's. Before creating a
discussion the bot looks in its journal, then in the repo's discussions (the lowest-numbered one with a valid
marker is the bot's); before commenting it looks for the report marker of this commit. A crash between a post and
the journal's update therefore never makes a second discussion or a second comment for one commit.

A commit that came with a Pull Request gets a comment on the PR. A later commit updates the repo's discussion: a
new report when something is still wrong, one "fixed" comment when it no longer is.
"""

from __future__ import annotations

import hmac
import re
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from hubguard.hooks.bot.report import format_report, format_resolved

if TYPE_CHECKING:
    from hubguard.hooks.bot.journal import Journal
    from hubguard.hooks.bot.payload import Target
    from hubguard.hooks.check import CheckReport

TITLE_FLAGGED = "hubguard: the model card's base_model disagrees with the weights"
TITLE_UNREADABLE = "hubguard: these weights cannot be checked for lineage"
TITLE_PREFIX = "hubguard:"
MAX_DISCUSSIONS_SCANNED = 200
_REPORT_RE = re.compile(r"<!-- hubguard-report sha=([0-9a-f]{40}) status=(\w+) sig=([0-9a-f]{32}) -->")


class Reporter:
    """Posts reports for one bot (its HfApi client, its journal, its signing key)."""

    def __init__(self, *, api: Any, journal: "Journal", key: str) -> None:
        self.api = api
        self.journal = journal
        self._key = key.encode("utf-8")

    def _sig(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8"), sha256).hexdigest()[:32]

    def repo_marker(self, repo_id: str) -> str:
        repo = repo_id.casefold()
        return f"<!-- hubguard-lineage-bot repo={repo} sig={self._sig('repo:' + repo)} -->"

    def report_marker(self, repo_id: str, sha: str, status: str) -> str:
        sig = self._sig(f"report:{repo_id.casefold()}@{sha}:{status}")
        return f"<!-- hubguard-report sha={sha} status={status} sig={sig} -->"

    def _reports(self, repo_id: str, texts: list[str]) -> list[tuple[str, str]]:
        """(sha, status) of the bot's signed report markers in `texts`, oldest first."""
        out = []
        for text in texts:
            for sha, status, sig in _REPORT_RE.findall(text or ""):
                if hmac.compare_digest(sig, self._sig(f"report:{repo_id.casefold()}@{sha}:{status}")):
                    out.append((sha, status))
        return out

    def _texts(self, repo_id: str, num: int) -> list[str]:
        details = self.api.get_discussion_details(repo_id, num)
        return [getattr(e, "content", "") or "" for e in details.events if getattr(e, "type", "") == "comment"]

    def find_discussion(self, repo_id: str) -> int | None:
        """The bot's discussion on `repo_id` by its signed marker (lowest number wins), or None."""
        marker = self.repo_marker(repo_id)
        found = []
        for i, d in enumerate(self.api.get_repo_discussions(repo_id, discussion_type="discussion")):
            if i >= MAX_DISCUSSIONS_SCANNED:
                break
            if d.title.startswith(TITLE_PREFIX) and not d.is_pull_request:
                texts = self._texts(repo_id, d.num)
                if texts and marker in texts[0]:
                    found.append(d.num)
        return min(found) if found else None

    def post(self, *, target: "Target", report: "CheckReport") -> tuple[str | None, int | None]:
        """Report one checked commit; returns (action: "discussion" | "comment" | None, discussion number)."""
        repo, sha = target.repo_id, target.revision
        status = "ok" if report.status == "ok" else report.status
        signed = f"{format_report(repo_id=repo, revision=sha, report=report)}\n\n{self.report_marker(repo, sha, status)}"
        if target.pr_num is not None:
            return self._comment_once(target, target.pr_num, signed, status) if status != "ok" else (None, None)
        num = self.journal.discussion(repo) or self.find_discussion(repo)
        if num is None:
            if status == "ok":
                return None, None
            title = TITLE_UNREADABLE if report.status == "unreadable" else TITLE_FLAGGED
            created = self.api.create_discussion(repo, title=title, description=f"{signed}\n{self.repo_marker(repo)}")
            self.journal.set_discussion(repo, created.num)
            return "discussion", created.num
        self.journal.set_discussion(repo, num)
        if status == "ok":
            signed = f"{format_resolved(repo_id=repo, revision=sha, report=report)}\n\n{self.report_marker(repo, sha, status)}"
        return self._comment_once(target, num, signed, status)

    def _comment_once(self, target: "Target", num: int, text: str, status: str) -> tuple[str | None, int]:
        reports = self._reports(target.repo_id, self._texts(target.repo_id, num))
        if any(sha == target.revision for sha, _ in reports):
            return "comment", num  # posted before a crash: not again
        if status == "ok" and (not reports or reports[-1][1] == "ok"):
            return None, num  # nothing was wrong at the last report: nothing to say
        self.api.comment_discussion(target.repo_id, num, text)
        return "comment", num
