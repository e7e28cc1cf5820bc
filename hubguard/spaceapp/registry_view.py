"""The registry tab: one search box (names, repos, notes) with family and licence filters, a page of entries
at a time (filtered and sliced in Arrow, so 1e5 entries page in well under a second), and an entry's detail:
its dog, metadata, known derivatives and notes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubguard.errors import RegistryError
from hubguard.spaceapp import html

if TYPE_CHECKING:
    import pyarrow as pa

    from hubguard.registry import Registry

ENTRY_COLUMNS = ["name", "family", "licence", "parameters", "added"]
PAGE_SIZE = 25
ALL = "all"
_TEXT_COLUMNS = ("name", "repo_id", "notes", "base_model")


@dataclass(frozen=True)
class EntryPage:
    rows: list[list[Any]]
    total: int  # entries matching the filters
    page: int  # 1-based, clamped to the pages there are
    pages: int
    families: list[str]
    licenses: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [dict(zip(ENTRY_COLUMNS, r)) for r in self.rows], "total": self.total, "page": self.page,
                "pages": self.pages, "families": self.families, "licenses": self.licenses}

    def status(self) -> str:
        if self.total == 0:
            return '<div class="hg-muted" id="hg-page-status" data-total="0">No entry matches these filters.</div>'
        first = (self.page - 1) * PAGE_SIZE + 1
        last = first + len(self.rows) - 1
        return (f'<div class="hg-muted" id="hg-page-status" data-total="{self.total}">entries {first}–{last} of '
                f"{self.total} · page {self.page} of {self.pages} · click a row for its details</div>")


def _mask(table: "pa.Table", *, text: str | None, family: str | None, license_: str | None) -> "pa.Array | None":
    import pyarrow.compute as pc

    masks = []
    if text:
        hit = None
        for col in _TEXT_COLUMNS:
            m = pc.fill_null(pc.match_substring(table.column(col), text, ignore_case=True), False)
            hit = m if hit is None else pc.or_(hit, m)
        masks.append(hit)
    for col, want in (("family", family), ("license", license_)):
        if want and want != ALL:
            masks.append(pc.fill_null(pc.equal(pc.utf8_lower(table.column(col)), want.lower()), False))
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = pc.and_(out, m)
    return out


def _choices(table: "pa.Table", col: str) -> list[str]:
    import pyarrow.compute as pc

    return [ALL] + sorted(v for v in pc.unique(table.column(col)).to_pylist() if v)


def entry_page(registry: "Registry", *, text: str | None = None, family: str | None = None,
               license_: str | None = None, page: int = 1) -> EntryPage:
    """One page of the entries matching the filters (best for 1e5 entries: nothing but the page leaves Arrow)."""
    table = registry.entries_table().select(["name", "family", "license", "parameters", "added_at", *_TEXT_COLUMNS[1:]])
    mask = _mask(table, text=(text or "").strip() or None, family=family, license_=license_)
    hits = table.filter(mask) if mask is not None else table
    pages = max(1, -(-hits.num_rows // PAGE_SIZE))
    page = min(max(1, int(page or 1)), pages)
    chunk = hits.slice((page - 1) * PAGE_SIZE, PAGE_SIZE).to_pylist()
    rows = [[r["name"], r["family"] or "", r["license"] or "", html.fmt_parameters(r["parameters"]),
             (r["added_at"] or "")[:10]] for r in chunk]
    return EntryPage(rows=rows, total=hits.num_rows, page=page, pages=pages, families=_choices(table, "family"),
                     licenses=_choices(table, "license"))


def entry_detail(registry: "Registry", *, name: str, with_dog: bool = True) -> tuple[dict[str, Any], str]:
    """(JSON, HTML) of one entry: metadata, known derivatives (verdict log and declared bases), notes, dog."""
    from hubguard.spaceapp.portraits import entry_dog

    if not name or not name.strip():
        raise RegistryError("Pick a registry entry: click its row, or type its name.", fix="Click a row of the table.")
    entry = registry.show(name.strip()).to_dict()
    derivatives = registry.derivatives_of(entry["name"])
    dog = None
    if with_dog:
        dog = html.Dog(entry_dog(registry, entry["name"]), entry["name"],
                       (html.fmt_parameters(entry.get("parameters")) + " parameters",), role="entry")
    data = {"entry": entry, "derivatives": derivatives}
    return data, html.entry_detail(entry=entry, dog=dog, derivatives=derivatives)
