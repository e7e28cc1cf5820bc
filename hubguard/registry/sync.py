"""Keep a Hub dataset registry and its local mirror in step: local changes go back in batches, with retry.

A Space has no persistent disk, so what it learns (verdicts of checks, moderators' decisions, entries they add
or remove) must end up in the dataset repo. `RegistrySync` journals every change next to the mirror
(`.cache/sync/journal.jsonl`, appended under the same lock as the change; one writing process per mirror) and commits the journal's changes in
one commit when `batch` of them are pending or the oldest has waited `interval_s` — from a background thread
(`start`/`stop`) or on demand (`flush`). A commit names the commit the mirror holds as its parent; when the
dataset moved on meanwhile (another writer, a moderator on the CLI), the new revision is downloaded, the
journaled changes are replayed onto it, and the commit is retried (`retries` times with exponential backoff).
A change stays in the journal until the Hub has accepted it, so a failed commit loses nothing.

Journal operations: `{"op": "verdict", "row": {...}}` (a verdict-log row as written), `{"op": "add", "name":
...}` (an entry and its verification file, as they are in the mirror) and `{"op": "remove", "name": ...,
"file": ...}`.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import HubguardError, RegistryError
from hubguard.registry import hub, schema, verdicts
from hubguard.registry.entries import concat, str_array
from hubguard.registry.locate import HubRegistry
from hubguard.utils import get_logger
from hubguard.utils.files import atomic_write_text

if TYPE_CHECKING:
    from hubguard.registry.store import Registry

logger = get_logger(__name__)

JOURNAL_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FlushResult:
    """One commit back to the dataset: how many journaled changes it carried, on top of which commit."""

    commit: str
    changes: int
    rebased: bool
    attempts: int


class Journal:
    """Append-only JSON lines; a torn last line (a crash mid-append) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        ops = []
        for line in lines:
            try:
                op = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(op, dict) and op.get("v") == JOURNAL_SCHEMA_VERSION and op.get("op") in {"verdict", "add", "remove"}:
                ops.append(op)
        return ops

    def append(self, op: dict[str, Any]) -> dict[str, Any]:
        import os

        op = {"v": JOURNAL_SCHEMA_VERSION, "id": uuid.uuid4().hex, "at": time.time(), **op}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(op, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return op

    def drop(self, ids: set[str]) -> None:
        keep = [op for op in self.read() if op["id"] not in ids]
        atomic_write_text(self.path, "".join(json.dumps(op, default=str) + "\n" for op in keep))


class RegistrySync:
    """Commits a mirrored registry's local changes back to its Hub dataset (see the module docstring)."""

    def __init__(self, registry: "Registry", *, hub_registry: HubRegistry, token: str | None = None,
                 batch: int | None = None, interval_s: float | None = None, retries: int = 5,
                 backoff_s: float = 1.0, max_wait_s: float = 30.0) -> None:
        self.registry, self.hub_registry, self.token = registry, hub_registry, token
        self.batch = batch or constants.space_sync_batch()
        self.interval_s = interval_s if interval_s is not None else constants.space_sync_interval_s()
        self.retries, self.backoff_s, self.max_wait_s = max(1, retries), backoff_s, max_wait_s
        self.journal = Journal(registry.path / hub.JOURNAL_FILE)
        self.last_error: str | None = None
        self._flush_lock = threading.Lock()
        self._state_lock = threading.RLock()  # a change and its journal line vs. a snapshot of both
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def repo_id(self) -> str:
        return self.hub_registry.repo_id

    def pending(self) -> int:
        return len(self.journal.read())

    # -- recording changes (each with its journal line, under the state lock) ------------------------------

    def log_verdict(self, **row: Any) -> dict[str, Any]:
        """`Registry.log_verdict`, journaled for the next commit back."""
        with self._state_lock:
            logged = self.registry.log_verdict(**row)
            self.journal.append({"op": "verdict", "row": logged})
        self._changed()
        return logged

    def add(self, source: Any, *, name: str, **meta: Any) -> Any:
        """`Registry.add`, journaled."""
        with self._state_lock:
            entry = self.registry.add(source, name=name, **meta)
            self.journal.append({"op": "add", "name": name})
        self._changed()
        return entry

    def remove(self, name: str) -> Any:
        """`Registry.remove`, journaled."""
        with self._state_lock:
            entry = self.registry.remove(name)
            self.journal.append({"op": "remove", "name": name, "file": entry.fingerprint_file})
        self._changed()
        return entry

    def _changed(self) -> None:
        if self.pending() >= self.batch:
            self._wake.set()

    # -- committing back ----------------------------------------------------------------------------------

    def flush(self) -> FlushResult | None:
        """Commit every journaled change now (None when there is none); retries, then raises RegistryError."""
        with self._flush_lock:
            last: Exception | None = None
            for attempt in range(1, self.retries + 1):
                try:
                    result = self._flush_once(attempt)
                    self.last_error = None
                    return result
                except HubguardError as err:
                    last = err
                except Exception as err:  # noqa: BLE001 - HTTP, OS and huggingface_hub errors: retry them all
                    last = err
                logger.warning("commit to dataset %s failed (attempt %d/%d): %s", self.repo_id, attempt, self.retries, last)
                if attempt < self.retries:
                    time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_wait_s))
            self.last_error = f"{type(last).__name__}: {last}"
            raise RegistryError(
                f"Committing {self.pending()} pending registry change(s) to dataset '{self.repo_id}' failed "
                f"{self.retries} times; last error: {self.last_error}.",
                fix="Check HF_TOKEN (it needs write access to the dataset) and the network; the changes stay journaled "
                    "and the next flush retries them.",
            ) from last

    def refresh(self) -> bool:
        """Bring the mirror up to the dataset's head (committing pending changes first). True if it moved."""
        if self.pending():
            return self.flush() is not None
        with self._flush_lock:
            head = hub.remote_head(repo_id=self.repo_id, revision=self.hub_registry.revision, token=self.token)
            if head == hub.read_state(self.registry.path).get("base_sha"):
                hub.write_state(self.registry.path, checked_at=time.time())
                return False
            self._rebase(head, [])
            return True

    def _flush_once(self, attempt: int) -> FlushResult | None:
        from huggingface_hub import HfApi

        api = HfApi(token=self.token)
        head = hub.remote_head(repo_id=self.repo_id, revision=self.hub_registry.revision, token=self.token)
        rebased = head != hub.read_state(self.registry.path).get("base_sha")
        if rebased:
            self._rebase(head, self.journal.read())
        with self._state_lock:  # the journal and the files it describes, taken together
            ops = self.journal.read()
            if not ops:
                return None
            operations = self._operations(ops)
        summary = self._message(ops)
        info = api.create_commit(repo_id=self.repo_id, repo_type="dataset", operations=operations,
                                 commit_message=summary, parent_commit=head, revision=self.hub_registry.revision)
        commit = getattr(info, "oid", None) or head
        with self._state_lock:
            self.journal.drop({op["id"] for op in ops})
            hub.write_state(self.registry.path, base_sha=commit, checked_at=time.time())
        logger.info("committed %d registry change(s) to dataset %s (%s)", len(ops), self.repo_id, commit[:10])
        return FlushResult(commit=commit, changes=len(ops), rebased=rebased, attempts=attempt)

    @staticmethod
    def _message(ops: list[dict[str, Any]]) -> str:
        counts = {k: sum(op["op"] == k for op in ops) for k in ("verdict", "add", "remove")}
        parts = [f"{n} {k}{'s' if n > 1 else ''}" for k, n in counts.items() if n]
        return "hubguard Space: " + ", ".join(parts)

    def _operations(self, ops: list[dict[str, Any]]) -> list[Any]:
        """Commit operations for the files the journaled changes touched (their content read now, in the lock)."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        root = self.registry.path
        paths = {schema.CARD_FILE, schema.INFO_FILE}
        deleted: set[str] = set()
        if any(op["op"] == "verdict" for op in ops):
            verdicts.compact_verdicts(self.registry)  # the dataset holds the log as one file
            paths.add(schema.VERDICTS_FILE)
        entries = [op for op in ops if op["op"] in {"add", "remove"}]
        if entries:
            paths.add(schema.ENTRIES_FILE)
        present = {e.name: e.fingerprint_file for e in self.registry.list()}
        for op in entries:
            rel = present.get(op["name"])
            if rel:
                paths.add(rel)
            elif op["op"] == "remove" and op.get("file"):
                deleted.add(op["file"])
        out: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=(root / p).read_bytes())
                          for p in sorted(paths) if (root / p).is_file()]
        out += [CommitOperationDelete(path_in_repo=p) for p in sorted(deleted - paths)]
        return out

    # -- replaying journaled changes onto a newer revision --------------------------------------------------

    def _rebase(self, head: str, ops: list[dict[str, Any]]) -> None:
        """Download `head`, replay `ops` onto it, and make it the mirror (in the registry's write lock)."""
        target = self.registry.path
        staging = hub.download_staging(target, repo_id=self.repo_id, revision=head, token=self.token)
        try:
            with self._state_lock, self.registry.write_lock():
                ops = self.journal.read() if ops else []
                if ops:
                    self._replay(staging, ops)
                hub.swap_in(staging, target)
                hub.write_state(target, repo_id=self.repo_id, revision=self.hub_registry.revision, base_sha=head,
                                checked_at=time.time())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.registry.invalidate()
        logger.info("mirror of %s moved to %s (%d local change(s) replayed)", self.repo_id, head[:10], len(ops))

    def _replay(self, staging: Path, ops: list[dict[str, Any]]) -> None:
        import pyarrow.compute as pc

        fresh = type(self.registry)(staging)
        rows = [op["row"] for op in ops if op["op"] == "verdict"]
        if rows:
            verdicts.append_rows(fresh, rows)
        names = [op["name"] for op in ops if op["op"] in {"add", "remove"}]
        if names:
            mine = self.registry.entries_table()
            theirs = fresh.entries_table()
            final = {op["name"]: op["op"] for op in ops if op["op"] in {"add", "remove"}}  # the last op per name wins
            table = theirs.filter(pc.invert(pc.is_in(theirs.column("name"), value_set=str_array(list(final)))))
            added = mine.filter(pc.is_in(mine.column("name"), value_set=str_array([n for n, o in final.items() if o == "add"])))
            for rel in added.column("fingerprint_file").to_pylist():
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.registry.path / rel, staging / rel)
            schema.write_table_atomic(fresh.entries_path, concat(table, added) if added.num_rows else table)
        fresh.invalidate()
        fresh.write_card(fresh.entries_table())

    # -- background thread --------------------------------------------------------------------------------

    def start(self) -> "RegistrySync":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hubguard-registry-sync", daemon=True)
            self._thread.start()
        return self

    def stop(self, *, flush: bool = True, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        if flush and self.pending():
            try:
                self.flush()
            except RegistryError as err:
                logger.warning("%s", err)

    def _due(self) -> bool:
        ops = self.journal.read()
        return bool(ops) and (len(ops) >= self.batch or time.time() - float(ops[0].get("at", 0)) >= self.interval_s)

    def _loop(self) -> None:
        refresh_every = constants.hub_registry_refresh_s()
        last_refresh = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=min(self.interval_s, 5.0))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._due():
                    self.flush()
                    last_refresh = time.monotonic()
                elif time.monotonic() - last_refresh >= refresh_every:
                    self.refresh()
                    last_refresh = time.monotonic()
            except HubguardError as err:
                logger.warning("registry sync: %s", err)

