"""What the bot writes: the verdict-log rows of one check, and the Markdown it posts on the Hub.

Everything a repo controls (declared base models, problem texts quoting them) is escaped before it reaches the
Markdown: no HTML (so no fake hidden markers), no mentions, no line breaks, bounded length.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubguard.hooks.check import CheckReport

_NAME_CHARS = re.compile(r"[^A-Za-z0-9._\-/]")


def safe_text(text: Any, *, limit: int = 600) -> str:
    """Uploader-influenced text made inert for Markdown: HTML escaped, mentions broken, one line, bounded."""
    out = html.escape(" ".join(str(text).split()), quote=False).replace("@", "@\u200b")
    return out if len(out) <= limit else out[: limit - 1] + "…"


def safe_name(name: Any) -> str:
    """A repo id as it may appear between backticks."""
    return _NAME_CHARS.sub("?", str(name))[:120] or "?"


def verdict_rows(*, repo_id: str, revision: str, report: "CheckReport", source: str,
                 extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The verdict-log rows of one check (keywords of `hubguard.registry.verdicts.verdict_row`): one per found base,
    one per false declared base, else one with the best (non-)match; an unreadable repo gets an 'unreadable' row."""
    declared = report.declared["base_model"]
    common = dict(repo_id=repo_id, revision=revision, declared_base_model=declared,
                  declared_relation=report.declared.get("base_model_relation"), source=source)
    details = {"status": report.status, "problems": [p.code for p in report.problems], "found_bases": report.found_bases,
               "expected_relation": report.expected_relation, "layers": report.layers, **(extra or {})}
    if report.status == "unreadable":
        return [dict(match=None, verdict="unreadable", flagged=True, reason=f"{report.reason} Fix: {report.fix}",
                     details=details, **common)]
    rows = [dict(match=m["name"], verdict="derivative", score=m["score"], z=m["z"], details=details,
                 flagged=any(p.code == "undeclared_derivative" and f"'{m['name']}'" in p.message for p in report.problems),
                 **common) for m in report.matches if m["verdict"] == "derivative"]
    for p in report.problems:
        if p.code == "false_base_model":
            base = next((b for b in declared if f"'{b}'" in p.message), None)
            rows.append(dict(match=base, verdict="independent", flagged=True, reason=p.message, details=details, **common))
    if not rows:
        best = report.matches[0] if report.matches else None
        verdict = best["verdict"] if best and best["verdict"] != "derivative" else "independent"
        errors = "; ".join(p.message for p in report.problems if p.is_error) or None
        rows.append(dict(match=best["name"] if best else None, verdict=verdict, score=best["score"] if best else None,
                         z=best["z"] if best else None, flagged=errors is not None, reason=errors, details=details,
                         **common))
    return rows


def headline(report: "CheckReport") -> str:
    errors = [p for p in report.problems if p.is_error]
    if report.status == "unreadable":
        return "**Verdict: unreadable — hubguard could not fingerprint these weights, so their lineage is unverified.**"
    if any(p.code == "undeclared_derivative" for p in errors):
        bases = ", ".join(f"`{safe_name(b)}`" for b in report.found_bases)
        return f"**Verdict: derivative of {bases}, not declared in the model card.**"
    if errors:
        return "**Verdict: the model card's lineage metadata is wrong or unreadable.**"
    return "**Verdict: declared lineage and weights agree.**"


def format_report(*, repo_id: str, revision: str | None, report: "CheckReport") -> str:
    """The Markdown the bot posts (and `hubguard upload --create-pr` puts in its PR): verdict, matches, problems,
    the fix."""
    at = f" at `{revision[:10]}`" if revision else ""
    declared = ", ".join(f"`{safe_name(b)}`" for b in report.declared["base_model"]) or "—"
    relation = safe_name(report.declared.get("base_model_relation") or "—")
    lines = [f"### hubguard lineage check of `{safe_name(repo_id)}`{at}", "", headline(report), ""]
    if report.status == "unreadable":
        lines += [f"Why: {safe_text(report.reason)}", "", f"**What to do:** {safe_text(report.fix)}", ""]
    lines += [f"Declared `base_model`: {declared} · relation: `{relation}`", ""]
    if report.matches:
        lines += ["| registry entry | verdict | score | z | false-positive rate |", "|---|---|---:|---:|---:|"]
        for m in report.matches:
            fpr = m.get("false_positive_rate")
            lines.append(f"| `{safe_name(m['name'])}` | {m['verdict']} | {m['score']:.1f} | {m['z']:.1f} | "
                         f"{'—' if fpr is None else f'{fpr:.2g}'} |")
        lines.append("")
    for p in report.problems:
        lines.append(f"- **{'error' if p.is_error else 'warning'}** `{p.code}`: {safe_text(p.message)}")
    lines += ["", "<sub>Score: 0–100 similarity of weight invariants (HuRef scale); z: against independently trained "
              "models. Posted by the hubguard lineage bot; a moderator will review. If this is wrong, reply here.</sub>"]
    return "\n".join(lines)


def format_resolved(*, repo_id: str, revision: str, report: "CheckReport") -> str:
    """The comment on the bot's open discussion when a later commit fixes what it reported."""
    return "\n".join([f"### hubguard lineage check of `{safe_name(repo_id)}` at `{revision[:10]}`", "", headline(report),
                      "", "The problem reported above is fixed in this commit. A moderator may close this discussion."])
