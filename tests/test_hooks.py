"""The pre-upload check, its CLI and the git pre-push hook, on real tiny models and a real registry folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubguard import errors
from hubguard.cli import app
from hubguard.hooks import check_upload, upload_folder_checked
from hubguard.registry import Registry
from tests.support.botkit import finetune

BASE = "org/base-llama"


def _finetune_like(src: Path, dst: Path, *, noise: float = 0.2, seed: int = 0) -> Path:
    """A copy whose every matrix moved by `noise` of its own scale (the size of a real fine-tune's update)."""
    return finetune(src, dst, noise=noise, seed=seed)


def _card(folder: Path, yaml: str) -> None:
    (folder / "README.md").write_text(f"---\n{yaml}\n---\n\n# A model\n")


@pytest.fixture(scope="module")
def registry(family_models, tmp_path_factory) -> Registry:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    reg.add(family_models["llama"][0], name=BASE, family="llama", license="apache-2.0")
    return reg


@pytest.fixture()
def derivative(family_models, tmp_path) -> Path:
    return _finetune_like(family_models["llama"][0], tmp_path / "finetune")


def test_undeclared_derivative_is_flagged(registry, derivative) -> None:
    report = check_upload(derivative, registry=registry, repo_id="me/finetune")
    assert report.found_bases == [BASE]
    assert [p.code for p in report.problems] == ["undeclared_derivative"]
    assert not report.agrees and report.exit_code(strict=True) == 1 and report.exit_code(strict=False) == 0
    assert report.matches[0]["score"] > 60 and report.matches[0]["verdict"] == "derivative"


def test_declared_derivative_passes(registry, derivative) -> None:
    _card(derivative, f"base_model: {BASE}\nbase_model_relation: finetune")
    report = check_upload(derivative, registry=registry)
    assert report.agrees and report.problems == [] and report.exit_code(strict=True) == 0


def test_false_base_model_is_flagged(registry, family_models, tmp_path) -> None:
    other = tmp_path / "independent"
    shutil.copytree(family_models["llama"][1], other)
    _card(other, f"base_model: {BASE}")
    report = check_upload(other, registry=registry)
    assert report.found_bases == []
    assert [p.code for p in report.problems] == ["false_base_model"]
    assert report.exit_code(strict=True) == 1


def test_unknown_declared_base_is_a_warning(registry, family_models, tmp_path) -> None:
    other = tmp_path / "independent"
    shutil.copytree(family_models["llama"][1], other)
    _card(other, "base_model: someone/not-registered")
    report = check_upload(other, registry=registry)
    assert [p.code for p in report.problems] == ["unverifiable_base_model"]
    assert report.agrees and report.exit_code(strict=True) == 0


def test_wrong_relation_is_a_warning(registry, derivative) -> None:
    _card(derivative, f"base_model: {BASE}\nbase_model_relation: quantized")
    report = check_upload(derivative, registry=registry)
    assert [p.code for p in report.problems] == ["relation_mismatch"] and report.agrees


def test_cli_check_json_and_strict_exit_code(registry, derivative) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["check", str(derivative), "--registry", str(registry.path), "--json", "--strict"])
    assert res.exit_code == 1, res.output
    data = json.loads(res.output)
    assert data["found_bases"] == [BASE] and data["agrees"] is False
    assert data["problems"][0]["level"] == "error"
    res = runner.invoke(app, ["check", str(derivative / "nope"), "--registry", str(registry.path)])
    assert res.exit_code == 2 and "is not a folder" in res.output


def test_broken_model_card_is_an_error_level_problem(registry, derivative) -> None:
    (derivative / "README.md").write_text("---\nbase_model: [unclosed\n---\n")
    report = check_upload(derivative, registry=registry)
    assert report.status == "problems" and "YAML" in (report.declared["card_error"] or "")
    bad = next(p for p in report.problems if p.code == "invalid_model_card")
    assert bad.is_error and "README.md" in bad.message


def test_strict_upload_wrapper_refuses_before_any_network_call(registry, derivative) -> None:
    class NoNetwork:
        def upload_folder(self, **kwargs):  # pragma: no cover - must not be reached
            raise AssertionError("upload attempted")

    with pytest.raises(errors.HookError, match="refused"):
        upload_folder_checked(folder=derivative, repo_id="me/finetune", registry=registry, api=NoNetwork())


def test_check_a_hub_repo_over_http(registry, derivative, hub_server) -> None:
    """`hubguard check hf://ORG/NAME` reads the repo over HTTP Range (the local Hub-shaped server)."""
    hub_server.add_repo("someone/finetune", derivative)
    res = CliRunner().invoke(app, ["check", "hf://someone/finetune", "--registry", str(registry.path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["found_bases"] == [BASE] and data["problems"][0]["code"] == "undeclared_derivative"



def test_a_memo_skips_refingerprinting_an_unchanged_model_only(registry, derivative, family_models, tmp_path) -> None:
    """A long-running checker (the Space) keeps candidates by the identity of their bytes: the same files give
    the same verdict without a second fingerprint; changed weights are read afresh."""
    from hubguard.lineage.candidate_memo import CandidateMemo

    memo = CandidateMemo()
    first = check_upload(derivative, registry=registry, memo=memo)
    again = check_upload(derivative, registry=registry, memo=memo)
    assert memo.hits == 1 and again.fingerprint is first.fingerprint and first.found_bases == [BASE]
    assert [(m["name"], m["score"], m["verdict"]) for m in again.matches] == \
        [(m["name"], m["score"], m["verdict"]) for m in first.matches]
    other = _finetune_like(family_models["llama"][0], tmp_path / "other", noise=0.6, seed=3)
    for weights in other.glob("*.safetensors"):
        shutil.copy(weights, derivative / weights.name)
    changed = check_upload(derivative, registry=registry, memo=memo)
    assert memo.hits == 1 and changed.fingerprint is not first.fingerprint
    assert changed.matches[0]["score"] != first.matches[0]["score"]
