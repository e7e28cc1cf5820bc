"""Client-side upload guards: a checked `upload_folder` and a git pre-push hook.

The Hub has no server-side pre-upload hook, so the check runs where the upload starts: every Python upload
path ends in `HfApi.create_commit`, and `upload_folder` is the common entry; git users push through a
pre-push hook.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import HookError

if TYPE_CHECKING:
    from hubguard.hooks.check import CheckReport

HOOK_MARKER = "# installed by hubguard"


def upload_folder_checked(
    *,
    folder: "str | os.PathLike[str]",
    repo_id: str,
    strict: bool = True,
    registry: Any = None,
    api: Any = None,
    **upload_kwargs: Any,
) -> tuple["CheckReport", Any]:
    """Run the pre-upload check, then `HfApi.upload_folder` — or refuse, under `strict`, when the weights
    derive from a registered base the model card does not declare (or the card names a false base).

    Returns (report, the upload's CommitInfo).
    """
    from hubguard.hooks.check import check_upload

    report = check_upload(folder, repo_id=repo_id, registry=registry)
    if strict and not report.agrees:
        details = "; ".join(p.message for p in report.problems if p.is_error)
        raise HookError(f"Upload of '{folder}' to '{repo_id}' refused by hubguard: {details} (pass strict=False to upload anyway).")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, **upload_kwargs)
    return report, info


def install_git_hook(*, repo_dir: "str | os.PathLike[str]", strict: bool = True, registry: str | None = None) -> Path:
    """Install a git pre-push hook that runs `hubguard check` on the repository before every push.

    Refuses to overwrite a pre-push hook it did not write.
    """
    repo = Path(repo_dir)
    git_dir = repo / ".git"
    if not git_dir.is_dir():
        raise HookError(f"'{repo}' is not a git repository (no .git folder). Clone the Hub repo with git first.")
    hook = git_dir / "hooks" / "pre-push"
    if hook.exists() and HOOK_MARKER not in hook.read_text(errors="replace"):
        raise HookError(f"'{hook}' exists and was not written by hubguard. Merge it by hand: call `hubguard check` from it.")
    args = ["check", '"$(git rev-parse --show-toplevel)"'] + (["--strict"] if strict else []) + (["--registry", f'"{registry}"'] if registry else [])
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(
        "#!/bin/sh\n"
        f"{HOOK_MARKER}: refuse pushes of undeclared derivatives\n"
        f'"{sys.executable}" -m hubguard.cli {" ".join(args)}\n'
    )
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return hook
