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
    from hubguard.lineage.calibration import CALIBRATION_FILE

    for needed in ("hubguard/spaceapp/app.py", "hubguard/registry/data/registry.json", f"hubguard/lineage/{CALIBRATION_FILE}"):
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


@pytest.mark.slow
@pytest.mark.browser
def test_deployed_space_installs_in_a_fresh_venv_and_serves_moderators(hub_server: HubServer, tmp_path: Path,  # noqa: F811
                                                                        minilm: Path) -> None:
    """Deploy, download into an empty folder, `pip install -r requirements.txt` into a fresh venv that cannot see
    the checkout, start `python app.py` with its registry on a Hub dataset, and drive it in Chromium: a check of
    the example derivative, a moderator (token) confirms the flag, and the decision is committed to the dataset."""
    import shutil
    import socket
    import time
    import urllib.request

    from huggingface_hub import snapshot_download

    from hubguard.registry import Registry

    shipped = Registry(ROOT / "registry")
    dataset = Registry(tmp_path / "dataset")
    dataset.add(shipped.fingerprint(shipped.names()[0]), name=shipped.names()[0], family="bert", license="apache-2.0")
    hub_server.add_repo("org/registry", dataset.path, repo_type="dataset")
    hub_server.add_repo("sentence-transformers/all-MiniLM-L6-v2", minilm)  # what example:minilm reads without the wheel
    res = CliRunner().invoke(app, ["space", "deploy", "org/space", "--token", HubServer.TOKEN, "--torch-index", "none",
                                   "--registry", "hf://datasets/org/registry"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "downloaded"
    snapshot_download(repo_id="org/space", repo_type="space", local_dir=str(folder), token=HubServer.TOKEN)
    shutil.rmtree(folder / ".cache", ignore_errors=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HUBGUARD_", "VIRTUAL_ENV"))}
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd=folder, env=clean,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = subprocess.run([str(py), "-c", "import hubguard; print(hubguard.__file__)"], cwd=folder, env=clean,
                           capture_output=True, text=True, check=True)
    assert probe.stdout.startswith(str(venv))  # the wheel's copy, never the checkout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = clean | {"HF_ENDPOINT": hub_server.endpoint, "HF_TOKEN": HubServer.TOKEN, "HF_HUB_OFFLINE": "0",  # the local Hub
                   "GRADIO_SERVER_NAME": "127.0.0.1",
                   "GRADIO_SERVER_PORT": str(port), "HUBGUARD_REGISTRY": "hf://datasets/org/registry",
                   "HUBGUARD_MODERATOR_TOKEN": "venv-secret", "HUBGUARD_SYNC_BATCH": "1", "HUBGUARD_SYNC_INTERVAL": "1",
                   "HUBGUARD_HOME": str(tmp_path / "home"), "HUBGUARD_CACHE": str(tmp_path / "cache"),
                   "HF_HOME": str(tmp_path / "hf-home"), "HUBGUARD_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen([str(py), "app.py"], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        from tests.test_space import BROWSER_ARGS, CHROMIUM

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("#hg-example-derivative").click()
            page.wait_for_selector("#hg-verdict-card[data-verdict='derivative']", timeout=600_000)
            page.get_by_role("tab", name="Moderation").click()
            token = page.locator("#hg-mod-token textarea, #hg-mod-token input").first
            token.fill("venv-secret")
            token.press("Enter")
            page.wait_for_function("document.querySelector('#hg-flagged').innerText.includes('example:minilm-derivative')",
                                   timeout=60_000)
            page.locator("#hg-review-repo textarea, #hg-review-repo input").first.fill("example:minilm-derivative")
            page.locator("#hg-confirm").click()
            page.wait_for_selector("#hg-mod-done[data-state='done']", timeout=60_000)
            browser.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the Space commits its journal back to the dataset (batch of 1)
            remote = Registry(tmp_path / f"readback-{int(time.monotonic() * 1000)}")
            remote.pull("org/registry", token=HubServer.TOKEN)
            decided = [v for v in remote.verdicts(repo_id="example:minilm-derivative") if v["source"] == "moderator"]
            if decided:
                break
            time.sleep(2)
        assert decided and decided[0]["logged_by"] == "local-moderator"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
