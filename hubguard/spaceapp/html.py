"""HTML the Space shows: verdict cards, the dog grid, error and empty states, and "how to read this".

Every string from a model, a card or a user is escaped. Cards carry `data-*` attributes (verdict, state) so
tests and scripts can read them without parsing prose.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

VERDICT_COLOURS = {"derivative": "#b42318", "inconclusive": "#b54708", "independent": "#067647",
                   "registered base": "#175cd3", "error": "#b42318", "unreadable": "#b54708"}
DOG_PX = 288  # rendered size of a dog; shown at >= 256 css px, one column on a 390 px phone

HOW_TO_READ = (
    "<b>How to read this.</b> <b>score</b> (0–100, like HuRef's ICS) is how alike the weight invariants of two "
    "models are, layer by layer. Independently trained models score near 0–10; a fine-tune keeps most of its "
    "base's score, but heavy training lowers it, so a score of 15 can still be a clear derivative. The verdict "
    "comes from <b>z</b>: how many standard deviations the score lies above the scores of independently trained "
    "model pairs (the calibrated null). z ≥ {derivative_z:g} is <i>derivative</i>, z < {independent_z:g} is "
    "<i>independent</i>, between them <i>inconclusive</i>. The <b>false-positive rate</b> is the share of "
    "independent pairs that scored at least as high ({n_null} pairs measured; “&lt; 1/{n_null}” when none did). "
    "<b>matched layers</b> counts layers whose own z clears the derivative threshold."
)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def fmt_fpr(x: float | None, n_null: int) -> str:
    if x is None:
        return "—"
    if x == 0:
        return f"&lt; 1/{n_null}" if n_null else "0"
    return f"{x:.4f}"


def fmt_parameters(n: int | None) -> str:
    """22713728 -> '22.7 M'."""
    if not n:
        return "—"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return str(n)


def how_to_read() -> str:
    from hubguard.lineage.calibration import load_calibration

    cal = load_calibration()
    n = len(cal.overall.samples)
    return ('<div class="hg-help" id="hg-help">'
            + HOW_TO_READ.format(derivative_z=cal.derivative_z, independent_z=cal.independent_z, n_null=n) + "</div>")


def null_size() -> int:
    from hubguard.lineage.calibration import load_calibration

    return len(load_calibration().overall.samples)


def placeholder(text: str, *, elem_id: str = "hg-verdict-card") -> str:
    return f'<div class="hg-card hg-muted" id="{elem_id}" data-state="empty">{esc(text)}</div>'


def error_card(*, title: str, message: str, fix: str | None, elem_id: str = "hg-verdict-card") -> str:
    """What failed and what to do, in place of the previous result (never a stale verdict)."""
    fix_html = f'<div class="hg-fix"><b>What to do:</b> {esc(fix)}</div>' if fix else ""
    return (f'<div class="hg-card hg-error" id="{elem_id}" data-state="error" data-verdict="error" role="alert">'
            f'<span class="hg-verdict" style="background:{VERDICT_COLOURS["error"]}">{esc(title)}</span>'
            f'<div class="hg-message">{esc(message)}</div>{fix_html}</div>')


def _stats(items: Sequence[tuple[str, str]]) -> str:
    return "".join(f'<div class="hg-stat"><span>{esc(k)}</span><b>{v}</b></div>' for k, v in items)


def _badge(verdict: str) -> str:
    colour = VERDICT_COLOURS.get(verdict, "#475467")
    return f'<span class="hg-verdict" style="background:{colour}">{esc(verdict)}</span>'


def stats_block(*, score: float | None, z: float | None, fpr: float | None, matched: Any) -> str:
    return '<div class="hg-grid">' + _stats((
        ("score (0–100)", fmt(score)), ("z vs. independent models", fmt(z)),
        ("false-positive rate", fmt_fpr(fpr, null_size())), ("matched layers", esc(matched if matched is not None else "—")),
    )) + "</div>"


@dataclass(frozen=True)
class LineageRow:
    """One row of the declared-vs-found table: which base, and what the weights say about it."""

    kind: str  # declared | found
    base: str
    status: str  # ok | error | warning | info
    text: str


def lineage_table(rows: Sequence[LineageRow]) -> str:
    if not rows:
        return '<div class="hg-muted">The model card declares no base_model and the weights match no registry entry.</div>'
    cls = {"ok": "hg-ok", "error": "hg-bad", "warning": "hg-warn", "info": "hg-info"}
    body = "".join(
        f'<tr data-status="{esc(r.status)}"><td>{esc(r.kind)}</td><td><code>{esc(r.base)}</code></td>'
        f'<td><span class="{cls[r.status]}">{r.text}</span></td></tr>' for r in rows
    )
    return f'<table class="hg-lineage"><tr><th></th><th>base model</th><th>what the weights say</th></tr>{body}</table>'


def check_card(*, source: str, verdict: str, headline: str, stats: str, rows: Sequence[LineageRow],
               relation: str | None, problems: Sequence[dict[str, Any]]) -> str:
    """The lineage check's card: verdict, headline, stats, declared vs. found, problems."""
    probs = "".join(f'<li class="hg-problem-{esc(p["level"])}"><b>{esc(p["level"])}</b>: {esc(p["message"])}</li>'
                    for p in problems)
    return (
        f'<div class="hg-card" id="hg-verdict-card" data-state="result" data-verdict="{esc(verdict)}" data-source="{esc(source)}">'
        f'{_badge(verdict)}<span class="hg-headline">{headline}</span>'
        f'<div class="hg-muted hg-source">{esc(source)}</div>{stats}{lineage_table(rows)}'
        f'<div class="hg-muted" style="margin-top:8px">declared relation: {esc(relation or "—")}</div>'
        + (f'<ul class="hg-problems">{probs}</ul>' if probs else "") + "</div>"
    )


def compare_card(*, a: str, b: str, verdict: str, score: float, z: float, fpr: float | None, matched: int,
                 total_layers: int, notes: Sequence[str]) -> str:
    meaning = {
        "derivative": "B derives from A: its weights keep A's invariants far beyond what independent models share.",
        "independent": "B does not derive from A: its weights look like those of an independently trained model.",
        "inconclusive": "Not enough evidence either way: the score is above independent models' but below the "
                        "derivative threshold.",
    }.get(verdict, "")
    note_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return (
        f'<div class="hg-card" id="hg-compare-card" data-state="result" data-verdict="{esc(verdict)}">'
        f'{_badge(verdict)}<span class="hg-headline"><b>B</b> vs. <b>A</b></span>'
        f'<div class="hg-muted hg-source">A (reference): {esc(a)}<br>B (candidate): {esc(b)}</div>'
        f'<div class="hg-meaning">{esc(meaning)}</div>'
        + stats_block(score=score, z=z, fpr=fpr, matched=f"{matched} / {total_layers}")
        + (f'<ul class="hg-notes">{note_html}</ul>' if note_html else "") + "</div>"
    )


def image_data_uri(img: "Image.Image") -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="WEBP", quality=88, method=4)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Dog:
    """One portrait in the grid: the picture, a title (model name) and caption lines below it."""

    image: "Image.Image"
    title: str
    lines: tuple[str, ...] = ()
    role: str = "match"  # query | match | a | b | entry
    verdict: str | None = None


def dog_grid(dogs: Sequence[Dog], *, elem_id: str, empty: str = "Portraits appear here.") -> str:
    """Dogs at >= 256 px with their captions below the picture (never over it); wraps to one column on a phone."""
    if not dogs:
        return f'<div class="hg-dogs hg-muted" id="{elem_id}" data-count="0">{esc(empty)}</div>'
    figs = []
    for d in dogs:
        tag = f'<span class="hg-tag hg-tag-{esc(d.role)}">{esc(d.role)}</span>'
        colour = VERDICT_COLOURS.get(d.verdict or "", "transparent")
        lines = "".join(f"<span>{esc(x)}</span>" for x in d.lines)
        figs.append(
            f'<figure class="hg-dog" data-role="{esc(d.role)}" style="border-color:{colour}">'
            f'<img src="{image_data_uri(d.image)}" alt="dog portrait of {esc(d.title)}" width="{DOG_PX}" height="{DOG_PX}">'
            f'<figcaption>{tag}<b title="{esc(d.title)}">{esc(d.title)}</b>{lines}</figcaption></figure>'
        )
    return f'<div class="hg-dogs" id="{elem_id}" data-count="{len(dogs)}">{"".join(figs)}</div>'


def entry_detail(*, entry: dict[str, Any], dog: Dog | None, derivatives: Sequence[dict[str, Any]]) -> str:
    """A registry entry: its dog, its metadata, its known derivatives and notes."""
    meta = [("family", entry.get("family")), ("licence", entry.get("license")),
            ("parameters", fmt_parameters(entry.get("parameters"))), ("architecture", entry.get("architecture")),
            ("layers", entry.get("num_layers")), ("hidden size", entry.get("hidden_size")),
            ("vocabulary", entry.get("vocab_size")), ("repo", entry.get("repo_id")),
            ("revision", (entry.get("revision") or "")[:12] or None), ("declared base", entry.get("base_model")),
            ("added", f"{(entry.get('added_at') or '')[:10]} by {entry.get('added_by') or '?'}"),
            ("verification data", f"{entry.get('storage') or '?'}, {fmt_parameters(entry.get('fingerprint_bytes'))}B")]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v if v not in (None, '') else '—')}</td></tr>" for k, v in meta)
    if derivatives:
        drows = "".join(
            f'<tr><td><code>{esc(d["repo_id"])}</code></td><td>{esc(d["via"])}</td><td>{fmt(d.get("score"))}</td>'
            f'<td>{"flagged" if d.get("flagged") else esc(d.get("relation") or "")}</td></tr>' for d in derivatives)
        deriv = (f'<table class="hg-derivs"><tr><th>known derivative</th><th>via</th><th>score</th><th></th></tr>'
                 f"{drows}</table>")
    else:
        deriv = '<div class="hg-muted">No known derivatives yet: checks run here and moderators\' marks add them.</div>'
    picture = dog_grid([dog], elem_id="hg-entry-dog") if dog else ""
    notes = esc(entry.get("notes") or "no notes")
    return (f'<div class="hg-card hg-entry" id="hg-entry-detail" data-entry="{esc(entry.get("name"))}">'
            f'<h3>{esc(entry.get("name"))}</h3><div class="hg-entry-body">{picture}'
            f'<div><table class="hg-meta">{rows}</table><p class="hg-notes"><b>Notes:</b> {notes}</p></div></div>'
            f"{deriv}</div>")


def moderator_status(*, who: str | None, how: str) -> str:
    if who:
        return f'<div class="hg-mod hg-ok" id="hg-mod-status" data-moderator="{esc(who)}">Moderator: <b>{esc(who)}</b> ({esc(how)})</div>'
    return f'<div class="hg-mod hg-muted" id="hg-mod-status" data-moderator="">{esc(how)}</div>'


def audit_card(*, verdict: str, summary: str, details: Sequence[tuple[str, str]]) -> str:
    colour = {"looks protected": "#067647", "not protected": "#b42318", "inconclusive": "#b54708"}.get(verdict, "#475467")
    return (f'<div class="hg-card" id="hg-audit-card" data-state="result" data-verdict="{esc(verdict)}">'
            f'<span class="hg-verdict" style="background:{colour}">{esc(verdict)}</span>'
            f'<div class="hg-meaning">{esc(summary)}</div><div class="hg-grid">{_stats(details)}</div></div>')
