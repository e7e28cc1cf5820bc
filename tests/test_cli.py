"""The CLI contracts: fingerprint, compare (JSON keys), dog, compare --sheet, check, and the exit-code table."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from hubguard.cli import app
from hubguard.constants import FINGERPRINT_VERSION

runner = CliRunner()


def test_fingerprint_json_and_saved_file(family_models, tmp_path) -> None:
    out = tmp_path / "a.fp.safetensors"
    res = runner.invoke(app, ["fingerprint", str(family_models["qwen2"][0]), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["model"]["family"] == "qwen2" and data["saved_to"] == str(out) and out.is_file()
    assert data["method"] == "hubguard-invariants" and data["version"] == FINGERPRINT_VERSION


def test_compare_json_contract(family_models, tmp_path) -> None:
    a, b = family_models["qwen2"][0], family_models["qwen2"][1]
    saved = tmp_path / "a.fp.safetensors"
    assert runner.invoke(app, ["fingerprint", str(a), "--out", str(saved)]).exit_code == 0
    res = runner.invoke(app, ["compare", str(saved), str(a), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {"score", "z", "verdict", "terms", "layers", "a", "b"} <= set(data)
    assert data["verdict"] == "derivative" and 0 <= data["score"] <= 100.0001
    assert {"layer", "match", "score", "z", "terms"} <= set(data["layers"][0])
    res = runner.invoke(app, ["compare", str(a), str(b), "--json"])
    assert json.loads(res.output)["verdict"] == "independent"
    human = runner.invoke(app, ["compare", str(a), str(b)])
    assert "verdict: independent" in human.output and "layers (candidate <- reference" in human.output


def test_dog_and_sheet(family_models, tmp_path) -> None:
    png = tmp_path / "dog.png"
    res = runner.invoke(app, ["dog", str(family_models["llama"][0]), "--out", str(png)])
    assert res.exit_code == 0, res.output
    img = Image.open(png)
    assert img.size == (512, 512)
    sheet = tmp_path / "sheet.png"
    res = runner.invoke(app, ["compare", str(family_models["llama"][0]), str(family_models["llama"][1]), "--sheet", str(sheet)])
    assert res.exit_code == 0, res.output
    assert Image.open(sheet).size[0] > Image.open(sheet).size[1] > 0


def test_errors_are_one_line_with_exit_code_2(tmp_path) -> None:
    res = runner.invoke(app, ["fingerprint", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["fingerprint", str(tmp_path), "--budget", "lots"])
    assert res.exit_code == 2 and "--budget" in res.output
    res = runner.invoke(app, ["dog", "hf://not-a-valid-spec", "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "hf://ORG/NAME" in res.output


def test_unreadable_weights_get_a_report_and_exit_code_2(family_models, tmp_path) -> None:
    """Every repo gets a report: an unsupported architecture is `unreadable` with the reason and the fix."""
    import shutil

    folder = shutil.copytree(family_models["llama"][0], tmp_path / "mystery")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "mystery", ["MysteryForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    res = runner.invoke(app, ["check", str(folder), "--json"])
    assert res.exit_code == 2, res.output
    report = json.loads(res.stdout)
    assert report["status"] == "unreadable" and report["error"] == "UnsupportedArchitectureError"
    assert "mystery" in report["reason"] and "--family" in report["fix"]
    # --family forces a map, and then the same folder is read (and says how the map was chosen)
    res = runner.invoke(app, ["fingerprint", str(folder), "--family", "llama", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"]["binding"] == "forced with family='llama'"
    res = runner.invoke(app, ["fingerprint", str(folder), "--family", "nope"])
    assert res.exit_code == 2 and "Known families" in res.output


def test_debug_prints_the_traceback(tmp_path) -> None:
    quiet = runner.invoke(app, ["fingerprint", str(tmp_path / "missing")])
    loud = runner.invoke(app, ["--debug", "fingerprint", str(tmp_path / "missing")])
    assert quiet.exit_code == loud.exit_code == 2
    assert "Traceback" not in quiet.output and "Traceback" in loud.output
    assert len([line for line in quiet.output.splitlines() if line.strip()]) == 1
