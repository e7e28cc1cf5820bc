"""`Registry`: a registry folder — add, list, show and remove base-model entries; search and the verdict log
(`hubguard.registry.search`, `hubguard.registry.verdicts`) work on it.

Writers take a file lock (`.cache/write.lock`), write every file to a temporary name and rename it into
place, so readers (which take no lock) always see either the previous or the next complete state, and a
writer killed mid-write leaves the previous state. Verification data is written before the entry that
points to it and deleted after the entry is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import RegistryCorruptError, RegistryError
from hubguard.registry import locate, schema, verdicts
from hubguard.registry.entries import Entry, concat, entry_row, now, relabel, str_array
from hubguard.utils import get_logger
from hubguard.utils.files import atomic_write_json, atomic_write_text
from hubguard.utils.names import slug

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from hubguard.lineage.candidate import Candidate
    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.registry.index import SketchSearcher
    from hubguard.registry.search import SearchResult

logger = get_logger(__name__)

LOCK_TIMEOUT_S = 120.0
_META_COLUMNS = [c for c in schema.ENTRY_COLUMNS if c != "sketch"]


class Registry:
    """A registry folder. `Registry()` uses the default (see `hubguard.registry.locate`)."""

    def __init__(self, path: "str | os.PathLike[str] | None" = None) -> None:
        self.path, self._seed_to = locate.resolve(path)
        self._cache_sig: tuple[int, int, int] | None = None
        self._table: pa.Table | None = None
        self._searcher: SketchSearcher | None = None

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r})"

    def invalidate(self) -> None:
        """Forget cached tables (after the folder was replaced underneath)."""
        self._cache_sig = None

    # -- files and locking ----------------------------------------------------------------------------------

    @property
    def entries_path(self) -> Path:
        return self.path / schema.ENTRIES_FILE

    @property
    def verdicts_path(self) -> Path:
        return self.path / schema.VERDICTS_FILE

    def write_lock(self):  # noqa: ANN202 - filelock.FileLock
        from filelock import FileLock

        (self.path / schema.CACHE_DIR).mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path / schema.CACHE_DIR / "write.lock"), timeout=LOCK_TIMEOUT_S)

    def make_writable(self) -> None:
        """Make `self.path` a folder we may write: seed the user's copy from the shipped registry if needed."""
        if self._seed_to is not None:
            from filelock import FileLock

            target = self._seed_to
            target.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(target.parent / ".registry-seed.lock"), timeout=LOCK_TIMEOUT_S):
                if not (target / schema.INFO_FILE).is_file():
                    tmp = target.with_name(f".{target.name}.seed{os.getpid()}")
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.copytree(self.path, tmp, ignore=shutil.ignore_patterns(schema.CACHE_DIR, "__pycache__"))
                    os.replace(tmp, target)
                    logger.info("seeded the user registry %s from %s", target, self.path)
            self.path, self._seed_to = target, None
            self._cache_sig = None
        info = self.path / schema.INFO_FILE
        if not info.is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(
                info, {"format": schema.REGISTRY_FORMAT, "schema_version": schema.SCHEMA_VERSION, "created_at": now()}
            )
        else:
            self.info()

    def info(self) -> dict[str, Any]:
        """`registry.json` (checked: it must be a hubguard registry of a readable schema version)."""
        p = self.path / schema.INFO_FILE
        if not p.exists():
            return {"format": schema.REGISTRY_FORMAT, "schema_version": schema.SCHEMA_VERSION}
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RegistryCorruptError(f"'{p}' is not valid JSON ({err}); the registry folder is damaged.") from err
        if not isinstance(data, dict) or data.get("format") != schema.REGISTRY_FORMAT:
            raise RegistryCorruptError(f"'{p}' does not describe a hubguard registry; '{self.path}' is another folder.")
        if int(data.get("schema_version", -1)) > schema.SCHEMA_VERSION:
            raise RegistryCorruptError(f"'{p}': registry schema version {data.get('schema_version')} is newer than "
                                       f"this hubguard reads ({schema.SCHEMA_VERSION}); upgrade hubguard.")
        return data

    def write_card(self, table: "pa.Table", n_verdicts: int | None = None) -> None:
        if n_verdicts is None:
            n_verdicts = verdicts.count_verdicts(self)
        fams = sorted({f for f in table.column("family").to_pylist() if f}) if table.num_rows else []
        text = locate.card_text(n_entries=table.num_rows, n_verdicts=n_verdicts, families=fams)
        atomic_write_text(self.path / schema.CARD_FILE, text)

    # -- entries table --------------------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.entries_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def entries_table(self) -> "pa.Table":
        """The entries table (cached until the file changes)."""
        self.info()
        sig = self._stat()
        if sig is None:
            self._table, self._cache_sig, self._searcher = None, None, None
            return schema.table_from_rows([], columns=schema.ENTRY_COLUMNS, fmt=schema.ENTRIES_FORMAT)
        if sig != self._cache_sig or self._table is None:
            self._table = schema.read_table(self.entries_path, columns=schema.ENTRY_COLUMNS, fmt=schema.ENTRIES_FORMAT)
            self._cache_sig, self._searcher = sig, None
        return self._table

    def _write_entries(self, table: "pa.Table") -> None:
        schema.write_table_atomic(self.entries_path, table)
        self.write_card(table)
        self._cache_sig = None

    def __len__(self) -> int:
        return self.entries_table().num_rows

    def names(self) -> list[str]:
        return self.entries_table().column("name").to_pylist()

    def _fp_relpath(self, name: str) -> str:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        return f"{schema.FINGERPRINT_DIR}/{slug(name)}-{digest}.safetensors"

    def add(
        self,
        source: "Fingerprint | str | os.PathLike[str]",
        *,
        name: str,
        family: str | None = None,
        license: str | None = None,  # noqa: A002 - the CLI option is --license
        base_model: str | None = None,
        base_model_relation: str | None = None,
        repo_id: str | None = None,
        revision: str | None = None,
        notes: str | None = None,
        added_by: str | None = None,
        storage: str = "auto",
        replace: bool = False,
    ) -> Entry:
        """Fingerprint `source` (or take a Fingerprint / saved fingerprint file) and register it as `name`."""
        from hubguard.lineage.api import as_fingerprint

        fp = as_fingerprint(source, keep_probe=True)  # references keep their token rows (lineage.cross)
        meta = dict(family=family, license=license, base_model=base_model, base_model_relation=base_model_relation,
                    repo_id=repo_id, revision=revision, notes=notes, added_by=added_by)
        return self.add_many([(fp, name, meta)], storage=storage, replace=replace)[0]

    def add_many(
        self, items: "list[tuple[Fingerprint, str, dict[str, Any]]]", *, storage: str = "auto", replace: bool = False
    ) -> list[Entry]:
        """Register several fingerprints in one write: [(fingerprint, name, metadata)]."""
        from hubguard.lineage.sketch import sketch
        from hubguard.registry.verification import save_verification

        if not items:
            return []
        names = [n for _, n, _ in items]
        for n in names:
            if not n or not n.strip():
                raise RegistryError("An entry needs a non-empty --name (normally the Hub repo id, e.g. org/model).")
        if len(set(names)) != len(names):
            raise RegistryError(f"Duplicate names in one add: {sorted({n for n in names if names.count(n) > 1})}.")
        items = [(relabel(fp, name=n, repo_id=meta.get("repo_id")), n, meta) for fp, n, meta in items]
        rows = [entry_row(fp, name=n, sketch=sketch(fp), **{k: v for k, v in meta.items() if v is not None})
                for fp, n, meta in items]
        self.make_writable()
        with self.write_lock():
            table = self.entries_table()
            existing = set(table.column("name").to_pylist())
            clash = [n for n in names if n in existing]
            if clash and not replace:
                raise RegistryError(f"{clash[0]!r} is already in the registry at {self.path}. Remove it first or use "
                                    "--replace.")
            for (fp, n, _), row in zip(items, rows):
                rel = self._fp_relpath(n)
                path, description = save_verification(fp, self.path / rel, storage=storage)
                row.update(fingerprint_file=rel, fingerprint_bytes=path.stat().st_size, storage=description)
            new = schema.table_from_rows(rows, columns=schema.ENTRY_COLUMNS, fmt=schema.ENTRIES_FORMAT,
                                         sketch_dim=len(rows[0]["sketch"]))
            if clash:
                import pyarrow.compute as pc

                table = table.filter(pc.invert(pc.is_in(table.column("name"), value_set=str_array(clash))))
            self._write_entries(concat(table, new))
        return [Entry.from_row({k: v for k, v in r.items() if k != "sketch"}) for r in rows]

    def remove(self, name: str) -> Entry:
        """Remove an entry and its verification data."""
        import pyarrow.compute as pc

        self.show(name)
        self.make_writable()
        with self.write_lock():
            table = self.entries_table()
            mask = pc.equal(table.column("name"), name)
            hit = table.filter(mask)
            if hit.num_rows == 0:
                raise RegistryError(f"{name!r} is not in the registry at {self.path}.")
            entry = Entry.from_row(hit.select(_META_COLUMNS).to_pylist()[0])
            self._write_entries(table.filter(pc.invert(mask)))
            if entry.fingerprint_file:
                (self.path / entry.fingerprint_file).unlink(missing_ok=True)
        return entry

    # -- reading --------------------------------------------------------------------------------------------

    def list(self, *, text: str | None = None, family: str | None = None, license: str | None = None) -> list[Entry]:  # noqa: A002
        """Entries, optionally filtered: `text` (case-insensitive substring of name, repo id or notes),
        exact `family` and `license` (case-insensitive)."""
        rows = self.entries_table().select(_META_COLUMNS).to_pylist()
        out = []
        for r in rows:
            if family and (r.get("family") or "").lower() != family.lower():
                continue
            if license and (r.get("license") or "").lower() != license.lower():
                continue
            if text:
                hay = " ".join(str(r.get(k) or "") for k in ("name", "repo_id", "notes", "base_model")).lower()
                if text.lower() not in hay:
                    continue
            out.append(Entry.from_row(r))
        return out

    def show(self, name: str) -> Entry:
        table = self.entries_table()
        names = table.column("name").to_pylist()  # no pyarrow.compute on a Python str: that imports pandas (~1 s)
        if name not in names:
            close = [n for n in names if name.lower() in n.lower()][:5]
            hint = f" Did you mean: {', '.join(close)}?" if close else " See `hubguard registry list`."
            raise RegistryError(f"{name!r} is not in the registry at {self.path}.{hint}")
        return Entry.from_row(table.slice(names.index(name), 1).select(_META_COLUMNS).to_pylist()[0])

    def fingerprint(self, name: str) -> "Fingerprint":
        """The verification data of an entry, as a Fingerprint."""
        from hubguard.registry.verification import load_verification

        entry = self.show(name)
        if not entry.fingerprint_file:
            raise RegistryCorruptError(f"Entry {name!r} in '{self.entries_path}' names no verification file.")
        return load_verification(self.path / entry.fingerprint_file)

    def sketches(self) -> "np.ndarray":
        return schema.sketch_matrix(self.entries_table().column("sketch"))

    def _search_stage(self) -> "SketchSearcher":
        from hubguard.registry.index import SketchSearcher

        table = self.entries_table()
        if self._searcher is None:
            cache = self.path / schema.CACHE_DIR / "index"
            if not os.access(self.path, os.W_OK):
                cache = constants.HUBGUARD_CACHE / "registry-index" / hashlib.sha1(str(self.path).encode()).hexdigest()[:16]
            self._searcher = SketchSearcher(schema.sketch_matrix(table.column("sketch")),
                                            names=table.column("name").to_pylist(), cache_dir=cache)
        return self._searcher

    def nearest(self, query_sketch: "np.ndarray", *, k: int) -> list[tuple[str, float]]:
        """Stage one only: the k entries whose sketches are closest to `query_sketch` (name, cosine)."""
        if len(self) == 0:
            return []
        rows, sims = self._search_stage().search(query_sketch, k)
        names = self.entries_table().column("name")
        return [(names[int(r)].as_py(), float(s)) for r, s in zip(rows, sims)]

    def search(
        self, source: "Candidate | Fingerprint | str | os.PathLike[str]", *, top_k: int = 5, candidates: int | None = None,
        exclude: list[str] | None = None,
    ) -> "list[SearchResult]":
        """Two-stage search: nearest sketches, then the verification pipeline on each (`hubguard.registry.search`)."""
        from hubguard.registry.search import search

        return search(self, source, top_k=top_k, candidates=candidates, exclude=exclude)

    # -- verdict log (hubguard.registry.verdicts) -----------------------------------------------------------

    def log_verdict(self, **row: Any) -> dict[str, Any]:
        """Append one verdict to the log (see `hubguard.registry.verdicts.log_verdict`)."""
        return verdicts.log_verdict(self, **row)

    def verdicts(self, **filters: Any) -> list[dict[str, Any]]:
        """Logged verdicts (oldest first), filtered by field values (repo_id case-insensitively, match, verdict, flagged,
        revision, source, since; see `hubguard.registry.verdicts.read_verdicts`)."""
        return verdicts.read_verdicts(self, **filters)

    def derivatives_of(self, name: str) -> list[dict[str, Any]]:
        """All known derivatives of `name` (verdict log and declared base models)."""
        return verdicts.derivatives_of(self, name)

    def flagged(self, *, since: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Uploads moderators should look at (flagged verdicts, unreadable ones included), newest first; `since`
        an ISO date/time."""
        return verdicts.flagged(self, since=since, limit=limit)

    # -- Hub sync -------------------------------------------------------------------------------------------

    def push(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the folder to the Hub dataset repo `repo_id` (see `hubguard.registry.hub.push`)."""
        from hubguard.registry.hub import push

        return push(self, repo_id=repo_id, **kwargs)

    def pull(self, repo_id: str, **kwargs: Any) -> Path:
        """Replace the folder with the Hub dataset repo `repo_id` (see `hubguard.registry.hub.pull`)."""
        from hubguard.registry.hub import pull

        return pull(self, repo_id=repo_id, **kwargs)
