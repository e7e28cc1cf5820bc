"""Sync a registry folder with a Hub dataset repo (huggingface_hub `upload_folder` / `snapshot_download`).

`push` uploads the folder as one commit (or a pull request with `create_pr=True`, for review by the
dataset's maintainers); local-only files (`.cache/`, temporary files) stay home. `pull` downloads a
revision into a temporary folder next to the registry, checks that it is a readable registry, and only
then swaps it in under the write lock, so a failed or partial download never replaces a good registry.

A registry named `hf://datasets/ORG/NAME[@REV]` (`HUBGUARD_REGISTRY`, `Registry("hf://datasets/...")`) is read
from a local mirror of the dataset (`mirror_folder`), downloaded on first use and refreshed when it is older
than `constants.hub_registry_refresh_s()` and no local change waits to be committed back
(`hubguard.registry.sync` commits those). The mirror remembers the commit it holds in `.cache/sync/state.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import HubguardError, RegistryError
from hubguard.registry import schema, verdicts
from hubguard.utils import get_logger
from hubguard.utils.files import atomic_write_json
from hubguard.utils.names import slug

if TYPE_CHECKING:
    from hubguard.registry.store import Registry

logger = get_logger(__name__)

LOCAL_ONLY = [f"{schema.CACHE_DIR}/*", ".*", "*/.*", "*.tmp*", "*.lock"]
STATE_FILE = f"{schema.CACHE_DIR}/sync/state.json"
JOURNAL_FILE = f"{schema.CACHE_DIR}/sync/journal.jsonl"
STATE_SCHEMA_VERSION = 1


def _hub_error(action: str, repo_id: str, err: Exception) -> RegistryError:
    from huggingface_hub import constants as hf_constants

    return RegistryError(
        f"{action} the registry {'to' if action == 'Pushing' else 'from'} dataset repo '{repo_id}' at "
        f"{hf_constants.ENDPOINT} failed: {type(err).__name__}: {err}. Check the repo id, your network, and that "
        "your token (HF_TOKEN or --token) may write there."
    )


def push(
    registry: "Registry",
    *,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload the registry folder to dataset repo `repo_id`; returns the commit (or pull request) URL."""
    from huggingface_hub import HfApi

    registry.info()
    if not (registry.path / schema.INFO_FILE).is_file():
        raise RegistryError(f"'{registry.path}' is not a registry folder yet (no {schema.INFO_FILE}); add entries first.")
    registry.list()  # refuse to publish a corrupted table
    verdicts.compact_verdicts(registry)  # local appends are segments; the dataset gets the log as one file
    api = HfApi(token=token)
    try:
        if not create_pr:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(registry.path),
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            create_pr=create_pr,
            ignore_patterns=LOCAL_ONLY,
            delete_patterns=[schema.VERDICT_SEGMENTS_GLOB],  # the dataset holds the log as one file (compacted above)
            commit_message=commit_message or f"hubguard registry: {len(registry)} entries",
        )
    except HubguardError:
        raise
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises HTTP, OS and validation errors alike
        raise _hub_error("Pushing", repo_id, err) from err
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info)


# --- downloading a revision beside a folder, then swapping it in -----------------------------------------------


def remote_head(*, repo_id: str, revision: str | None = None, token: str | None = None) -> str:
    """The commit sha `revision` (default main) of dataset repo `repo_id` points at now."""
    from huggingface_hub import HfApi

    try:
        sha = HfApi(token=token).dataset_info(repo_id, revision=revision).sha
    except Exception as err:  # noqa: BLE001
        raise _hub_error("Pulling", repo_id, err) from err
    if not sha:
        raise RegistryError(f"The Hub did not say which commit dataset repo '{repo_id}' is at; retry later.")
    return sha


def download_staging(target: Path, *, repo_id: str, revision: str | None, token: str | None) -> Path:
    """Download `revision` of `repo_id` into a fresh folder beside `target` (the caller swaps it in or deletes it)."""
    from huggingface_hub import snapshot_download

    staging = target.with_name(f".{target.name}.pull{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision, local_dir=str(staging), token=token)
    except Exception as err:  # noqa: BLE001
        shutil.rmtree(staging, ignore_errors=True)
        raise _hub_error("Pulling", repo_id, err) from err
    shutil.rmtree(staging / schema.CACHE_DIR, ignore_errors=True)  # huggingface_hub's own metadata folder
    if not (staging / schema.INFO_FILE).is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise RegistryError(f"Dataset repo '{repo_id}' has no {schema.INFO_FILE}; it is not a hubguard registry.")
    return staging


def swap_in(staging: Path, target: Path) -> None:
    """Replace `target`'s files by `staging`'s, keeping `target`'s local-only `.cache` (the caller holds the lock)."""
    target.mkdir(parents=True, exist_ok=True)
    backup = target.with_name(f".{target.name}.old{os.getpid()}")
    shutil.rmtree(backup, ignore_errors=True)
    for item in list(target.iterdir()):  # keep our .cache (it holds the lock we are holding)
        if item.name != schema.CACHE_DIR:
            backup.mkdir(exist_ok=True)
            os.replace(item, backup / item.name)
    for item in staging.iterdir():
        if item.name != schema.CACHE_DIR:
            os.replace(item, target / item.name)
    shutil.rmtree(target / schema.CACHE_DIR / "index", ignore_errors=True)
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def pull(registry: "Registry", *, repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """Replace the registry folder with revision `revision` of dataset repo `repo_id`; returns the folder."""
    registry.make_writable()
    target = registry.path
    staging = download_staging(target, repo_id=repo_id, revision=revision, token=token)
    try:
        pulled = type(registry)(staging)  # the same class, reading the downloaded folder
        pulled.info()
        for entry in pulled.list():
            if not entry.fingerprint_file or not (staging / entry.fingerprint_file).is_file():
                raise RegistryError(f"Dataset repo '{repo_id}' lists {entry.name!r} but lacks its verification data "
                                    f"'{entry.fingerprint_file}'.")
        pulled.verdicts()
    except HubguardError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with registry.write_lock():
        swap_in(staging, target)
    registry.invalidate()
    logger.info("pulled %s into %s", repo_id, target)
    return target


# --- registries named hf://datasets/ORG/NAME[@REV] -----------------------------------------------------------


def mirror_folder(*, repo_id: str, revision: str | None) -> Path:
    """Where the local mirror of a Hub dataset registry lives (under HUBGUARD_CACHE)."""
    return constants.HUBGUARD_CACHE / "hub-registries" / f"{slug(repo_id)}@{slug(revision or 'main')}"


def read_state(folder: Path) -> dict[str, Any]:
    """The mirror's sync state ({} when there is none or it is unreadable: the mirror is then re-checked)."""
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) and data.get("schema_version") == STATE_SCHEMA_VERSION else {}


def write_state(folder: Path, **fields: Any) -> None:
    atomic_write_json(folder / STATE_FILE, {**read_state(folder), **fields, "schema_version": STATE_SCHEMA_VERSION})


def has_pending_changes(folder: Path) -> bool:
    """True when local changes wait in the mirror's journal to be committed back (see `hubguard.registry.sync`)."""
    journal = folder / JOURNAL_FILE
    return journal.is_file() and journal.stat().st_size > 0


def _mirror_lock(folder: Path):  # noqa: ANN202 - filelock.FileLock
    from filelock import FileLock

    (folder / schema.CACHE_DIR).mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / schema.CACHE_DIR / "write.lock"), timeout=120.0)


def ensure_mirror(*, repo_id: str, revision: str | None, token: str | None = None,
                  refresh_after_s: float | None = None) -> Path:
    """The local mirror of dataset registry `repo_id@revision`: downloaded if missing, refreshed when older than
    `refresh_after_s` (default `constants.hub_registry_refresh_s()`), unless local changes wait to be committed
    back. A mirror that cannot be refreshed (no network) is used as it is, with a warning."""
    folder = mirror_folder(repo_id=repo_id, revision=revision)
    ttl = constants.hub_registry_refresh_s() if refresh_after_s is None else refresh_after_s
    state = read_state(folder)
    present = (folder / schema.INFO_FILE).is_file() and state.get("repo_id") == repo_id
    if present and (time.time() - float(state.get("checked_at", 0)) < ttl or has_pending_changes(folder)):
        return folder
    try:
        head = remote_head(repo_id=repo_id, revision=revision, token=token)
    except RegistryError as err:
        if not present:
            raise
        logger.warning("using the cached copy of %s (%s): %s", repo_id, folder, err)
        return folder
    if present and head == state.get("base_sha"):
        write_state(folder, checked_at=time.time())
        return folder
    staging = download_staging(folder, repo_id=repo_id, revision=head, token=token)
    with _mirror_lock(folder):
        if has_pending_changes(folder):  # a writer journaled a change meanwhile: keep its base, sync rebases
            shutil.rmtree(staging, ignore_errors=True)
            return folder
        swap_in(staging, folder)
        write_state(folder, repo_id=repo_id, revision=revision, base_sha=head, checked_at=time.time())
    logger.info("mirrored dataset registry %s@%s (%s) into %s", repo_id, revision or "main", head[:10], folder)
    return folder
