"""Git hooks: check exactly what a push (or a commit) sends, never the working folder.

`install_git_hook` writes a `pre-push` hook where git will run it: `git rev-parse --git-path hooks/pre-push`
honours `core.hooksPath` and linked worktrees (whose hooks live in the main repository). The hook calls
`hubguard hooks pre-push REMOTE URL`, which reads git's `<local ref> <local sha> <remote ref> <remote sha>` lines
from stdin and checks the tree of every pushed commit (`check_push`) through a `GitTreeStore`: the model card,
config and weights as committed, LFS objects from the local LFS store.

For the pre-commit framework (`.pre-commit-hooks.yaml`, id `hubguard-check`), `hubguard hooks pre-commit` checks
the commit being pushed at the pre-push stage (`PRE_COMMIT_TO_REF`) and the index (`git write-tree`: exactly what
the commit will hold) at the pre-commit stage.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from hubguard import constants
from hubguard.errors import HookError
from hubguard.hooks.stores import GitTreeStore, git
from hubguard.utils.files import atomic_write_text

if TYPE_CHECKING:
    from hubguard.hooks.check import CheckReport
    from hubguard.registry import Registry

HOOK_MARKER = "# installed by hubguard"
_ZERO_SHA = re.compile(r"^0+$")
_HUB_HOSTS = {"huggingface.co", "hf.co", "www.huggingface.co"}


@dataclass(frozen=True)
class PushedRef:
    """One line git gives a pre-push hook on stdin."""

    local_ref: str
    local_sha: str
    remote_ref: str
    remote_sha: str

    @property
    def is_deletion(self) -> bool:
        return bool(_ZERO_SHA.match(self.local_sha))


def parse_pre_push(text: str) -> list[PushedRef]:
    """git's pre-push stdin: `<local ref> SP <local sha> SP <remote ref> SP <remote sha>` per line."""
    refs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise HookError(f"Line {n} of the pre-push input is not '<local ref> <local sha> <remote ref> <remote sha>': "
                            f"{line[:200]!r}. This command is meant to be run by git as a pre-push hook.")
        refs.append(PushedRef(*parts))
    return refs


def repo_id_from_url(url: str | None) -> str | None:
    """`org/name` of a Hub git remote (https://huggingface.co/org/name[.git], git@hf.co:org/name), else None."""
    if not url:
        return None
    endpoint_host = urlsplit(constants.hf_endpoint()).hostname
    if "://" not in url and ":" in url:  # scp-like: git@hf.co:org/name
        host, _, path = url.partition(":")
        host = host.rpartition("@")[2]
    else:
        parts = urlsplit(url)
        host, path = parts.hostname or "", parts.path
    if host not in _HUB_HOSTS | {endpoint_host}:
        return None
    segments = [s for s in path.removesuffix(".git").strip("/").split("/") if s]
    return "/".join(segments[-2:]) if len(segments) >= 2 else None


def _toplevel(repo_dir: Path) -> Path:
    if not repo_dir.is_dir():
        raise HookError(f"'{repo_dir}' is not a folder. Pass a git clone of the Hub repo.")
    try:
        return Path(git(repo_dir, "rev-parse", "--show-toplevel").decode().strip())
    except HookError:
        raise HookError(f"'{repo_dir}' is not a git repository (or a bare one). Clone the Hub repo with git first, "
                        "then install the hook in the clone.") from None


def hook_path(repo_dir: "str | os.PathLike[str]", name: str = "pre-push") -> Path:
    """Where git runs hook `name` for this repository (core.hooksPath and worktrees honoured)."""
    top = _toplevel(Path(repo_dir))
    rel = git(top, "rev-parse", "--git-path", f"hooks/{name}").decode().strip()
    return (top / rel).resolve() if not os.path.isabs(rel) else Path(rel)


_LFS_HOOK_LINE = 'git lfs pre-push "$@"'
_LFS_CHAIN = """# chained: the git-lfs hook that was here (uploads the LFS objects of the push)
command -v git-lfs >/dev/null 2>&1 || { echo >&2 "This repository uses Git LFS but git-lfs is not on PATH."; exit 2; }
printf '%s' "$refs" | git lfs pre-push "$@"
"""


def _is_lfs_hook(text: str) -> bool:
    """The pre-push hook `git lfs install` writes (and nothing else)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#!")]
    return bool(lines) and lines[-1] == _LFS_HOOK_LINE and all("git-lfs" in ln or "git lfs" in ln for ln in lines)


def hook_script(*, strict: bool, registry: str | None, chain_lfs: bool = False) -> str:
    """The pre-push hook: the check of the pushed commits, then (`chain_lfs`) git-lfs's own pre-push step."""
    args = ["-m", "hubguard.cli", "hooks", "pre-push", "--strict" if strict else "--no-strict"]
    if registry:
        args += ["--registry", str(Path(registry).expanduser().resolve())]
    command = " ".join(shlex.quote(a) for a in [sys.executable, *args])
    return ("#!/bin/sh\n"
            f"{HOOK_MARKER}: check the commits being pushed for undeclared lineage (hubguard hooks install-git)\n"
            'refs="$(cat)"\n'
            f'printf \'%s\' "$refs" | {command} "$@" || exit $?\n'
            + (_LFS_CHAIN if chain_lfs else ""))


def install_git_hook(*, repo_dir: "str | os.PathLike[str]", strict: bool = True, registry: str | None = None) -> Path:
    """Install the pre-push hook where git will run it; returns its path. The hook git-lfs installs is kept (run
    after the check); any other hook hubguard did not write is left alone and refused (merge it by hand)."""
    hook = hook_path(repo_dir)
    existing = hook.read_text(errors="replace") if hook.exists() else ""
    chain_lfs = _is_lfs_hook(existing) or (HOOK_MARKER in existing and "# chained: the git-lfs hook" in existing)
    if existing and HOOK_MARKER not in existing and not chain_lfs:
        raise HookError(f"'{hook}' exists and was not written by hubguard. Merge it by hand: pipe the hook's stdin "
                        f"into `{sys.executable} -m hubguard.cli hooks pre-push \"$@\"` (git passes the pushed refs on "
                        "stdin) and stop the push when it fails.")
    atomic_write_text(hook, hook_script(strict=strict, registry=registry, chain_lfs=chain_lfs))
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return hook


@dataclass(frozen=True)
class CheckedTree:
    """The check of one tree: what was checked (a ref and its commit, or the index) and the report."""

    what: str
    treeish: str
    report: "CheckReport"


def check_tree(*, repo_dir: "str | os.PathLike[str]", treeish: str, what: str, repo_id: str | None,
               registry: "Registry | str | None", **options: object) -> CheckedTree:
    """Check the files of one git tree exactly as committed."""
    from hubguard.hooks.check import check_upload

    store = GitTreeStore(repo_dir=repo_dir, treeish=treeish, name=f"{what} ({treeish[:12]})")
    try:
        report = check_upload(store.name, repo_id=repo_id, registry=registry, store=store, **options)  # type: ignore[arg-type]
    finally:
        store.close()
    return CheckedTree(what=what, treeish=treeish, report=report)


def check_push(*, repo_dir: "str | os.PathLike[str]", refs: list[PushedRef], remote_url: str | None = None,
               repo_id: str | None = None, registry: "Registry | str | None" = None,
               **options: object) -> list[CheckedTree]:
    """Check the tree of every pushed commit (each distinct commit once; deletions push nothing)."""
    from hubguard.registry import Registry

    reg = registry if isinstance(registry, Registry) else Registry(registry)
    repo_id = repo_id or repo_id_from_url(remote_url)
    out: list[CheckedTree] = []
    seen: set[str] = set()
    for ref in refs:
        if ref.is_deletion or ref.local_sha in seen:
            continue
        seen.add(ref.local_sha)
        out.append(check_tree(repo_dir=repo_dir, treeish=ref.local_sha, what=ref.local_ref, repo_id=repo_id,
                              registry=reg, **options))
    return out


def check_staged(*, repo_dir: "str | os.PathLike[str]", repo_id: str | None = None,
                 registry: "Registry | str | None" = None, **options: object) -> list[CheckedTree]:
    """What the pre-commit framework's hook checks: the commit being pushed at its pre-push stage, else the
    index (the tree `git commit` would record)."""
    to_ref, remote_url = constants.pre_commit_push()
    top = _toplevel(Path(repo_dir))
    if to_ref:
        sha = git(top, "rev-parse", "--verify", f"{to_ref}^{{commit}}").decode().strip()
        return [check_tree(repo_dir=top, treeish=sha, what=f"pushed commit {sha[:12]}",
                           repo_id=repo_id or repo_id_from_url(remote_url), registry=registry, **options)]
    tree = git(top, "write-tree").decode().strip()
    return [check_tree(repo_dir=top, treeish=tree, what="staged files", repo_id=repo_id, registry=registry, **options)]


def exit_code(checked: list[CheckedTree], *, strict: bool) -> int:
    """The worst code over the checked trees (2 unreadable, 1 a lineage problem under strict, 0 ok)."""
    return max((c.report.exit_code(strict=strict) for c in checked), default=0)
