"""The git pre-push hook and the pre-commit-framework hook check what is pushed or committed, never the working folder:
real git, Debian's git-lfs, a local bare remote, the pre-commit package."""
# ruff: noqa: F811  (the registry fixture is imported, then requested by name)

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubguard.errors import HookError
from hubguard.hooks.git import hook_path, install_git_hook, parse_pre_push, repo_id_from_url
from hubguard.hooks.stores import GitTreeStore, parse_lfs_pointer
from tests.test_hooks import BASE, _card, _finetune_like, registry  # noqa: F401 - registry is a fixture

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("git-lfs") is None,
                                reason="needs git and git-lfs")


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PRE_COMMIT"))}
    env.update(HUBGUARD_DISABLE_PROGRESS_BARS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com", HOME=str(tmp / "home"),
               GIT_CONFIG_NOSYSTEM="1", PRE_COMMIT_HOME=str(tmp / "pre-commit-home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    (tmp / "home").mkdir(exist_ok=True)
    return env


def run(*args: str | Path, cwd: Path, env: dict[str, str], check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, input=stdin, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture()
def clone(family_models, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """A model repo with git-lfs tracking the weights (its own pre-push hook installed), and a bare remote."""
    env = _env(tmp_path)
    remote, work = tmp_path / "remote.git", tmp_path / "model"
    run("git", "init", "-q", "--bare", remote, cwd=tmp_path, env=env)
    _finetune_like(family_models["llama"][0], work)  # an undeclared derivative of BASE, no README.md
    run("git", "init", "-q", "-b", "main", work, cwd=tmp_path, env=env)
    run("git", "lfs", "install", "--local", cwd=work, env=env)
    run("git", "lfs", "track", "*.safetensors", cwd=work, env=env)
    run("git", "remote", "add", "origin", remote, cwd=work, env=env)
    return work, remote, env


def _commit(work: Path, env: dict[str, str], message: str, *paths: str) -> str:
    run("git", "add", "-A", *paths, cwd=work, env=env)
    run("git", "commit", "-q", "-m", message, cwd=work, env=env)
    return run("git", "rev-parse", "HEAD", cwd=work, env=env).stdout.strip()


def _push(work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run("git", "push", "origin", "HEAD:main", cwd=work, env=env, check=False)


def _remote_head(remote: Path, env: dict[str, str]) -> str | None:
    done = run("git", "rev-parse", "--verify", "-q", "main", cwd=remote, env=env, check=False)
    return done.stdout.strip() or None


def test_pre_push_checks_the_pushed_commit_not_the_working_folder(clone, registry) -> None:
    work, remote, env = clone
    hook = install_git_hook(repo_dir=work, registry=str(registry.path))
    assert hook == (work / ".git" / "hooks" / "pre-push").resolve() and "git lfs pre-push" in hook.read_text()
    _commit(work, env, "weights, no card")
    _card(work, f"base_model: {BASE}")  # the card exists on disk only
    blocked = _push(work, env)
    assert blocked.returncode != 0, blocked.stdout + blocked.stderr
    assert "undeclared_derivative" in blocked.stdout and _remote_head(remote, env) is None
    good = _commit(work, env, "add the card")
    pushed = _push(work, env)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert _remote_head(remote, env) == good
    assert run("git", "lfs", "ls-files", cwd=work, env=env).stdout.count("safetensors") == 1
    # The card deleted in the commit but left on disk: the pushed commit has no card.
    run("git", "rm", "-q", "--cached", "README.md", cwd=work, env=env)
    run("git", "commit", "-q", "-m", "drop the card from the commit", cwd=work, env=env)
    assert (work / "README.md").is_file()
    again = _push(work, env)
    assert again.returncode != 0 and "undeclared_derivative" in again.stdout
    assert _remote_head(remote, env) == good


def test_every_pushed_ref_is_checked_and_deletions_are_skipped(clone, registry) -> None:
    work, _, env = clone
    _card(work, f"base_model: {BASE}")
    good = _commit(work, env, "declared")
    run("git", "rm", "-q", "README.md", cwd=work, env=env)
    bad = _commit(work, env, "card removed")
    stdin = (f"refs/heads/main {good} refs/heads/main {'0' * 40}\n"
             f"refs/heads/wip {bad} refs/heads/wip {'0' * 40}\n"
             f"(delete) {'0' * 40} refs/heads/old {good}\n")
    done = run(sys.executable, "-m", "hubguard.cli", "hooks", "pre-push", "origin", "https://huggingface.co/me/model",
               "--registry", registry.path, "--json", cwd=work, env=env, check=False, stdin=stdin)
    assert done.returncode == 1, done.stderr
    import json

    reports = json.loads(done.stdout)
    assert [(r["what"], r["status"]) for r in reports] == [("refs/heads/main", "ok"), ("refs/heads/wip", "problems")]
    assert reports[0]["repo_id"] == "me/model"


def test_missing_lfs_object_says_to_fetch_it(clone, registry) -> None:
    work, _, env = clone
    _card(work, f"base_model: {BASE}")
    sha = _commit(work, env, "declared")
    shutil.rmtree(work / ".git" / "lfs" / "objects")
    install_git_hook(repo_dir=work, registry=str(registry.path))
    blocked = _push(work, env)
    out = blocked.stdout + blocked.stderr
    assert blocked.returncode != 0 and "UNREADABLE" in out and _remote_head(clone[1], env) is None, out
    assert "git lfs fetch" in out and "Git LFS pointer" in out and "corrupt" not in out.lower()
    direct = run(sys.executable, "-m", "hubguard.cli", "hooks", "pre-push", "--registry", registry.path, cwd=work, env=env,
                 check=False, stdin=f"refs/heads/main {sha} refs/heads/main {'0' * 40}\n")
    assert direct.returncode == 2  # unreadable: exit 2
    store = GitTreeStore(repo_dir=work, treeish=sha)
    with pytest.raises(Exception, match="git lfs fetch"):
        store.read_ranges("model.safetensors", [(0, 8)])


def test_hook_goes_where_git_runs_it_core_hookspath_and_worktrees(clone, registry) -> None:
    work, remote, env = clone
    run("git", "config", "core.hooksPath", ".githooks", cwd=work, env=env)
    hook = install_git_hook(repo_dir=work, registry=str(registry.path))
    assert hook == (work / ".githooks" / "pre-push").resolve()
    _commit(work, env, "weights, no card", ".")
    assert "undeclared_derivative" in _push(work, env).stdout and _remote_head(remote, env) is None
    run("git", "config", "--unset", "core.hooksPath", cwd=work, env=env)
    # A linked worktree: its hooks are the main repository's.
    tree = work.parent / "linked"
    run("git", "worktree", "add", "-q", "-b", "side", tree, cwd=work, env=env)
    linked_hook = install_git_hook(repo_dir=tree, registry=str(registry.path))
    assert linked_hook == (work / ".git" / "hooks" / "pre-push").resolve() == hook_path(work)
    blocked = run("git", "push", "origin", "HEAD:side", cwd=tree, env=env, check=False)
    assert blocked.returncode != 0 and "undeclared_derivative" in blocked.stdout


def test_install_refuses_foreign_hooks_and_non_repos(clone, tmp_path) -> None:
    work, _, _ = clone
    hook = hook_path(work)
    hook.write_text("#!/bin/sh\necho someone else's hook\n")
    with pytest.raises(HookError, match="not written by hubguard"):
        install_git_hook(repo_dir=work)
    assert "someone else" in hook.read_text()
    with pytest.raises(HookError, match="not a folder"):
        install_git_hook(repo_dir=tmp_path / "nowhere")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(HookError, match="not a git repository"):
        install_git_hook(repo_dir=plain)


def test_pre_commit_framework_hook(clone, registry, tmp_path) -> None:
    """`.pre-commit-hooks.yaml` (id hubguard-check) run by the pre-commit package, at both stages."""
    pytest.importorskip("pre_commit")
    work, _, env = clone
    hooks_repo = tmp_path / "hubguard-hooks"
    hooks_repo.mkdir()
    shutil.copy(ROOT / ".pre-commit-hooks.yaml", hooks_repo)
    run("git", "init", "-q", hooks_repo, cwd=tmp_path, env=env)
    rev = _commit(hooks_repo, env, "hooks")
    (work / ".pre-commit-config.yaml").write_text(
        "repos:\n"
        f"  - repo: {hooks_repo}\n"
        f"    rev: {rev}\n"
        "    hooks:\n"
        "      - id: hubguard-check\n"
        "        language: unsupported  # the shipped hook installs hubguard; here it is already installed\n"
        f"        args: [--registry, {registry.path}]\n")
    precommit = [sys.executable, "-m", "pre_commit"]
    run("git", "add", "-A", cwd=work, env=env)
    _card(work, f"base_model: {BASE}")  # on disk only: the staged files have no card
    blocked = run(*precommit, "run", "hubguard-check", cwd=work, env=env, check=False)
    assert blocked.returncode != 0 and "undeclared_derivative" in blocked.stdout, blocked.stdout + blocked.stderr
    run("git", "add", "README.md", cwd=work, env=env)
    ok = run(*precommit, "run", "hubguard-check", cwd=work, env=env, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    good = _commit(work, env, "declared")
    run("git", "rm", "-q", "--cached", "README.md", cwd=work, env=env)  # the card stays on disk
    run("git", "commit", "-q", "-m", "card removed", cwd=work, env=env)
    bad = run("git", "rev-parse", "HEAD", cwd=work, env=env).stdout.strip()
    pushed_bad = run(*precommit, "run", "hubguard-check", "--hook-stage", "pre-push", "--from-ref", good, "--to-ref", bad,
                     cwd=work, env=env, check=False)
    assert pushed_bad.returncode != 0 and "undeclared_derivative" in pushed_bad.stdout


def test_git_tree_store_and_parsers(clone) -> None:
    work, _, env = clone
    big = work / "notes.dat"
    big.write_bytes(os.urandom(9 << 20))  # a plain blob above the in-memory limit: spooled to a file
    sha = _commit(work, env, "all")
    store = GitTreeStore(repo_dir=work, treeish=sha)
    assert "model.safetensors" in store.list_files() and "notes.dat" in store.list_files()
    assert store.read_ranges("notes.dat", [(5, 9), ((9 << 20) - 3, 9 << 20)]) == [big.read_bytes()[5:9], big.read_bytes()[-3:]]
    weights = (work / "model.safetensors").read_bytes()
    assert store.size("model.safetensors") == len(weights)
    assert store.read_ranges("model.safetensors", [(0, 8)]) == [weights[:8]]
    assert store.read_text("config.json") == (work / "config.json").read_text() and store.read_text("nope") is None
    with pytest.raises(Exception, match="asked for"):
        store.read_ranges("config.json", [(0, 10**9)])
    store.close()
    assert parse_lfs_pointer(b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 12\n").size == 12
    assert parse_lfs_pointer(b"version https://git-lfs.github.com/spec/v1\noid sha256:zz\nsize 12\n") is None
    assert parse_lfs_pointer(b"hello") is None
    assert [r.local_ref for r in parse_pre_push(f"refs/heads/a {'1' * 40} refs/heads/a {'0' * 40}\n\n")] == ["refs/heads/a"]
    with pytest.raises(HookError, match="pre-push"):
        parse_pre_push("garbage\n")
    assert repo_id_from_url("https://user:tok@huggingface.co/org/name.git") == "org/name"
    assert repo_id_from_url("git@hf.co:org/name") == "org/name"
    assert repo_id_from_url("/tmp/remote.git") is None and repo_id_from_url("https://example.com/a/b") is None
