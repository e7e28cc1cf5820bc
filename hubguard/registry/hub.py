"""Sync a registry folder with a Hub dataset repo (huggingface_hub `upload_folder` / `snapshot_download`).

`push` uploads the folder as one commit (or a pull request with `create_pr=True`, for review by the
dataset's maintainers); local-only files (`.cache/`, temporary files) stay home. `pull` downloads a
revision into a temporary folder next to the registry, checks that it is a readable registry, and only
then swaps it in under the write lock, so a failed or partial download never replaces a good registry.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from hubguard.errors import HubguardError, RegistryError
from hubguard.registry import schema
from hubguard.utils import get_logger

if TYPE_CHECKING:
    from hubguard.registry.store import Registry

logger = get_logger(__name__)

LOCAL_ONLY = [f"{schema.CACHE_DIR}/*", ".*", "*/.*", "*.tmp*", "*.lock"]


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
            commit_message=commit_message or f"hubguard registry: {len(registry)} entries",
        )
    except HubguardError:
        raise
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises HTTP, OS and validation errors alike
        raise _hub_error("Pushing", repo_id, err) from err
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info)


def pull(registry: "Registry", *, repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """Replace the registry folder with revision `revision` of dataset repo `repo_id`; returns the folder."""
    from huggingface_hub import snapshot_download

    registry.make_writable()
    target = registry.path
    staging = target.with_name(f".{target.name}.pull{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision, local_dir=str(staging), token=token)
    except Exception as err:  # noqa: BLE001
        shutil.rmtree(staging, ignore_errors=True)
        raise _hub_error("Pulling", repo_id, err) from err
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's own metadata folder
    try:
        pulled = type(registry)(staging)  # the same class, reading the downloaded folder
        if not (staging / schema.INFO_FILE).is_file():
            raise RegistryError(f"Dataset repo '{repo_id}' has no {schema.INFO_FILE}; it is not a hubguard registry.")
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
        backup = target.with_name(f".{target.name}.old{os.getpid()}")
        shutil.rmtree(backup, ignore_errors=True)
        lock_dir = target / schema.CACHE_DIR
        (staging / schema.CACHE_DIR).mkdir(exist_ok=True)
        for item in list(target.iterdir()):  # keep our .cache (it holds the lock we are holding)
            if item.name != schema.CACHE_DIR:
                backup.mkdir(exist_ok=True)
                os.replace(item, backup / item.name)
        for item in staging.iterdir():
            if item.name != schema.CACHE_DIR:
                os.replace(item, target / item.name)
        shutil.rmtree(lock_dir / "index", ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    registry.invalidate()
    logger.info("pulled %s into %s", repo_id, target)
    return target
