"""`hubguard upload` against the local Hub-shaped server: exactly the uploaded files are checked, --fix-card writes
the card through ModelCard, --create-pr opens a pull request; declared lineage read as the Hub documents it."""
# ruff: noqa: F811  (the hub_server fixture is imported, then requested by name)

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubguard.cli import app
from hubguard.errors import HookError
from hubguard.hooks import check_upload, upload_folder_checked
from hubguard.hooks.card import parse_model_card, read_declared_lineage
from hubguard.hooks.stores import SelectedFilesStore, upload_plan
from tests.support.hubserver import HubServer, hub_server  # noqa: F401 - pytest fixture
from tests.test_hooks import BASE, _card, _finetune_like, registry  # noqa: F401 - registry is a fixture


@pytest.fixture()
def derivative(family_models, tmp_path) -> Path:
    return _finetune_like(family_models["llama"][0], tmp_path / "finetune")


@pytest.fixture()
def authed(hub_server, monkeypatch) -> HubServer:
    monkeypatch.setenv("HF_TOKEN", HubServer.TOKEN)
    return hub_server


def _upload(*args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(app, ["upload", *args, "--json"])
    try:
        return res.exit_code, json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(res.output) from None


def _files(server: HubServer, repo: str, rev: str = "main") -> dict[str, bytes]:
    import json as _json

    state = _json.loads((server.repo_dir(repo) / "repo.json").read_text())
    commit = server.repo_dir(repo) / "commits" / state["refs"][rev]
    return {p.relative_to(commit).as_posix(): p.read_bytes() for p in commit.rglob("*") if p.is_file()}


def test_a_pattern_that_drops_the_card_fails_the_check(authed, registry, derivative) -> None:
    _card(derivative, f"base_model: {BASE}")
    code, out = _upload(str(derivative), "someone/ft", "--exclude", "README.md", "--strict", "--registry", str(registry.path))
    assert code == 1 and not out["uploaded"] and "README.md" not in out["files"]
    assert out["report"]["problems"][0]["code"] == "undeclared_derivative" and "refused" in out["refused"]
    assert authed.requests(method="POST") == []  # refused before any write
    code, out = _upload(str(derivative), "someone/ft", "--strict", "--registry", str(registry.path))
    assert code == 0 and out["uploaded"] and out["report"]["status"] == "ok", out
    assert set(_files(authed, "someone/ft")) == set(out["files"]) >= {"README.md", "model.safetensors", "config.json"}
    with pytest.raises(HookError, match="refused"):
        upload_folder_checked(folder=derivative, repo_id="someone/ft", registry=registry, ignore_patterns=["README.md"])


def test_fix_card_writes_the_detected_lineage_then_uploads(authed, registry, derivative) -> None:
    code, out = _upload(str(derivative), "someone/fixed", "--fix-card", "--strict", "--registry", str(registry.path))
    assert code == 0 and out["uploaded"], out
    assert out["card_changes"] == {"base_model": BASE, "base_model_relation": "finetune"}
    meta = parse_model_card((derivative / "README.md").read_text())
    assert meta["base_model"] == BASE and meta["base_model_relation"] == "finetune"
    assert b"base_model: org/base-llama" in _files(authed, "someone/fixed")["README.md"]
    # A card that declares a false base keeps its prose, loses the false base, gains the found one.
    (derivative / "README.md").write_text("---\nbase_model: someone/else\nlicense: mit\n---\n\n# Prose stays\n")
    report = check_upload(derivative, registry=registry)
    from hubguard.hooks.upload import card_fix, fix_model_card

    assert card_fix(report)["base_model"] == [BASE, "someone/else"]  # unverifiable bases are kept
    fix_model_card(folder=derivative, report=report)
    text = (derivative / "README.md").read_text()
    assert "# Prose stays" in text and parse_model_card(text)["license"] == "mit"


def test_fix_card_refuses_when_the_patterns_drop_the_card(authed, registry, derivative) -> None:
    _card(derivative, "license: mit")
    res = CliRunner().invoke(app, ["upload", str(derivative), "someone/x", "--fix-card", "--exclude", "README.md",
                                   "--registry", str(registry.path)])
    assert res.exit_code == 2 and "leave it out of the upload" in res.output
    assert authed.requests(method="POST") == []


def test_create_pr_opens_a_pull_request_with_the_report(authed, registry, derivative) -> None:
    _card(derivative, f"base_model: {BASE}\nbase_model_relation: finetune")
    code, out = _upload(str(derivative), "someone/pr", "--create-pr", "--registry", str(registry.path))
    assert code == 0 and out["uploaded"], out
    [pr] = authed.discussions("someone/pr")
    assert pr["isPullRequest"] and "declared lineage and weights agree" in pr["events"][0]["data"]["latest"]["raw"]
    assert "model.safetensors" in _files(authed, "someone/pr", f"refs/pr/{pr['num']}")
    assert _files(authed, "someone/pr") == {}  # main untouched


def test_weights_left_out_by_include_patterns_are_unreadable(authed, registry, derivative) -> None:
    code, out = _upload(str(derivative), "someone/y", "--include", "*.json", "--strict", "--registry", str(registry.path))
    assert code == 2 and out["report"]["status"] == "unreadable" and not out["uploaded"]


def test_upload_plan_is_upload_folders_selection(derivative) -> None:
    (derivative / ".git").mkdir()
    (derivative / ".git" / "HEAD").write_text("ref")
    (derivative / "sub").mkdir()
    (derivative / "sub" / "notes.txt").write_text("n")
    files = upload_plan(derivative, ignore_patterns=["*.txt"])
    assert ".git/HEAD" not in files and "sub/notes.txt" not in files and "model.safetensors" in files
    assert upload_plan(derivative, allow_patterns=["sub/*"]) == ["sub/notes.txt"]
    store = SelectedFilesStore(derivative, files=["config.json"])
    assert store.list_files() == ["config.json"] and store.read_text("model.safetensors") is None
    with pytest.raises(Exception, match="not among the files"):
        store.size("model.safetensors")


@pytest.mark.parametrize(("yaml", "declared"), [
    (f"base_model: {BASE}", [BASE]),
    ("base_model:\n- Org/Base-Llama\n- other/model", ["Org/Base-Llama", "other/model"]),
    ("base_model:\n  name: org/base-llama", ["org/base-llama"]),
    ("base_model:\n- name: org/base-llama\n- id: other/model", ["org/base-llama", "other/model"]),
])
def test_base_model_is_read_as_the_hub_documents_it(tmp_path, yaml, declared) -> None:
    from hubguard.weights.store import LocalStore

    _card(tmp_path, yaml)
    assert read_declared_lineage(LocalStore(tmp_path))["base_model"] == declared


def test_declared_base_compares_case_insensitively(registry, derivative) -> None:
    _card(derivative, "base_model: Org/Base-LLAMA")
    report = check_upload(derivative, registry=registry)
    assert report.status == "ok" and not [p for p in report.problems if p.is_error]


def test_strict_refusal_keeps_the_folder_unchanged(registry, derivative, tmp_path) -> None:
    before = {p.name: p.read_bytes() for p in derivative.iterdir()}
    with pytest.raises(HookError, match="refused"):
        upload_folder_checked(folder=derivative, repo_id="me/x", registry=registry, api=object())
    assert {p.name: p.read_bytes() for p in derivative.iterdir()} == before
    shutil.rmtree(derivative)
