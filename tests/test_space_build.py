"""`hubguard space build` / `deploy`: a self-contained Space folder (from the checkout and from an installed
wheel), deployed to the Hub-shaped server and downloaded into an empty folder; the slow test installs it into a
fresh venv that cannot see the checkout, starts it and drives it in Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hubguard.cli.main import app
from tests.support.hubserver import HubServer, hub_server  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]


def _yaml(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _check_folder(folder: Path) -> Path:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    wheels = [f for f in files if f.startswith("wheels/") and f.endswith(".whl")]
    assert sorted(set(files) - set(wheels)) == ["README.md", "app.py", "requirements.txt"] and len(wheels) == 1
    meta = _yaml(folder / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["hf_oauth"] is True
    assert meta["sdk_version"] and len(meta["short_description"]) <= 60
    reqs = [r for r in (folder / "requirements.txt").read_text().splitlines() if r and not r.startswith("#")]
    assert f"./{wheels[0]}[space]" in reqs  # the wheel the folder carries, not an unpublished index package
    assert not any(r.startswith("hubguard") for r in reqs)
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("gradio[oauth]==") for r in reqs)
    names = zipfile.ZipFile(folder / wheels[0]).namelist()
    for needed in ("hubguard/spaceapp/app.py", "hubguard/registry/data/registry.json", "hubguard/lineage/calibration_v1.json"):
        assert needed in names
    assert "from hubguard.spaceapp import launch" in (folder / "app.py").read_text()
    return folder / wheels[0]


def test_build_writes_a_self_contained_space(tmp_path: Path) -> None:
    out = tmp_path / "space"
    res = CliRunner().invoke(app, ["space", "build", str(out), "--registry", "hf://datasets/org/reg", "--moderators", "alice,bob"])
    assert res.exit_code == 0, res.output
    _check_folder(out)
    assert "HUBGUARD_REGISTRY` | `hf://datasets/org/reg`" in (out / "README.md").read_text()
    assert "--extra-index-url" in (out / "requirements.txt").read_text()
    # A non-empty folder is refused (exit 2, one line that says what to do); --overwrite replaces it.
    res = CliRunner().invoke(app, ["space", "build", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert CliRunner().invoke(app, ["space", "build", str(out), "--overwrite", "--torch-index", "none"]).exit_code == 0
    assert "--extra-index-url" not in (out / "requirements.txt").read_text()


def test_build_from_an_installed_wheel(tmp_path: Path) -> None:
    """hubguard installed from its wheel (no checkout anywhere on the path) builds the same Space."""
    first = _check_folder(_build(tmp_path / "from-checkout"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(first)],
                   check=True, timeout=300, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    out = tmp_path / "from-install"
    done = subprocess.run([sys.executable, "-m", "hubguard.cli", "space", "build", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    probe = subprocess.run([sys.executable, "-c", "import hubguard; print(hubguard.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True)
    assert probe.stdout.startswith(str(site))  # really the installed copy, not the checkout
    second = _check_folder(out)
    a, b = (sorted(n for n in zipfile.ZipFile(w).namelist() if not n.endswith("RECORD")) for w in (first, second))
    assert a == b


def _build(out: Path) -> Path:
    res = CliRunner().invoke(app, ["space", "build", str(out), "--torch-index", "none"])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.network
def test_deploy_then_download_into_an_empty_folder(hub_server: HubServer, tmp_path: Path) -> None:  # noqa: F811
    from huggingface_hub import snapshot_download

    res = CliRunner().invoke(app, ["space", "deploy", "org/hubguard-space", "--token", HubServer.TOKEN, "--registry",
                                   "hf://datasets/org/reg", "--moderator-org", "mods", "--json"])
    assert res.exit_code == 0, res.output
    assert hub_server.space_variables["org/hubguard-space"]["HUBGUARD_REGISTRY"]["value"] == "hf://datasets/org/reg"
    assert hub_server.space_variables["org/hubguard-space"]["HUBGUARD_MODERATOR_ORG"]["value"] == "mods"
    empty = tmp_path / "downloaded"
    snapshot_download(repo_id="org/hubguard-space", repo_type="space", local_dir=str(empty), token=HubServer.TOKEN)
    import shutil

    shutil.rmtree(empty / ".cache", ignore_errors=True)
    _check_folder(empty)
    # Without a token the Hub refuses the upload: a hubguard error naming the repo and the fix.
    res = CliRunner().invoke(app, ["space", "deploy", "org/other-space"])
    assert res.exit_code == 2 and "org/other-space" in res.output and "token" in res.output
