"""The Gradio Space in headless Chromium: a lineage check, the registry tab, and an error message."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubguard.registry import Registry

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
BASE = "org/base-llama"
APP = Path(__file__).resolve().parents[1] / "space" / "app.py"
SCREENSHOTS = Path(os.environ.get("HUBGUARD_SCREENSHOTS", "")) if os.environ.get("HUBGUARD_SCREENSHOTS") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_app():  # noqa: ANN202 - the space/app.py module
    spec = importlib.util.spec_from_file_location("hubguard_space_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                              "--disable-component-update"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def models(family_models, tmp_path_factory) -> dict[str, Path]:
    """A registry holding one tiny llama, a fine-tune of it (no model card) and an unrelated model."""
    root = tmp_path_factory.mktemp("space")
    reg = Registry(root / "registry")
    reg.add(family_models["llama"][0], name=BASE, family="llama", license="apache-2.0")
    reg.log_verdict(repo_id="someone/sneaky-finetune", match=BASE, verdict="derivative", score=97.0, z=12.0, source="webhook")
    ft = root / "finetune"
    shutil.copytree(family_models["llama"][0], ft)
    tensors = load_file(str(ft / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    save_file({k: t + 0.2 * t.std() * torch.randn(t.shape, generator=g) if t.dim() == 2 else t for k, t in tensors.items()},
              str(ft / "model.safetensors"))
    return {"registry": root / "registry", "finetune": ft, "base": family_models["llama"][0]}


@pytest.fixture(scope="module")
def app_url(models) -> Iterator[str]:
    app = _load_app()
    port = _free_port()
    demo = app.launch(app.build_demo(registry=models["registry"]), server_name="127.0.0.1", server_port=port,
                      prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def _shot(page, name: str) -> None:  # noqa: ANN001
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_lineage_check_registry_and_errors(browser, app_url, models) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(app_url, wait_until="networkidle")
        source = page.locator("#hg-source textarea, #hg-source input").first
        # A derivative: the verdict card says so and the gallery holds the query's and the match's portraits.
        source.fill(str(models["finetune"]))
        page.locator("#hg-check").click()
        card = page.locator("#hg-verdict-card")
        card.wait_for(timeout=45_000)
        assert card.get_attribute("data-verdict") == "derivative"
        assert "derivative" in card.inner_text() and BASE in card.inner_text()
        assert "undeclared" in card.inner_text()
        page.wait_for_function("document.querySelectorAll('#hg-gallery img').length >= 2", timeout=15_000)
        assert page.locator("#hg-gallery").inner_text().count(BASE) >= 1
        assert page.locator("#hg-layers").inner_text().count(BASE) >= 1
        _shot(page, "lineage")
        # A path that does not exist: hubguard's message, no traceback.
        source.fill("/nonexistent/model")
        page.locator("#hg-check").click()
        toast = page.get_by_text("is not a folder")
        toast.first.wait_for(timeout=20_000)
        assert "Traceback" not in page.content()
        _shot(page, "error")
        # The registry tab: the entry and the flagged upload from the verdict log.
        page.get_by_role("tab", name="Registry").click()
        entries = page.locator("#hg-entries")
        page.wait_for_function(f"document.querySelector('#hg-entries').innerText.includes('{BASE}')", timeout=15_000)
        assert "apache-2.0" in entries.inner_text() and "llama" in entries.inner_text()
        page.wait_for_function("document.querySelector('#hg-flagged').innerText.includes('someone/sneaky-finetune')",
                               timeout=15_000)
        _shot(page, "registry")
        # Compare two models: the JSON summary and both portraits.
        page.get_by_role("tab", name="Compare two models").click()
        page.get_by_label("A (reference)").fill(str(models["base"]))
        page.get_by_label("B (candidate)").fill(str(models["finetune"]))
        page.locator("#hg-compare").click()
        page.wait_for_function("document.querySelector('#hg-cmp-json').innerText.includes('derivative')", timeout=30_000)
        page.wait_for_function("document.querySelectorAll('#hg-cmp-gallery img').length == 2", timeout=15_000)
        _shot(page, "compare")
    finally:
        page.close()
