"""The Space in headless Chromium (Debian chromium + Playwright): every tab driven as a person would, with
screenshots (saved to $HUBGUARD_SCREENSHOTS, else a temporary folder), at desktop width and at 390 px."""

from __future__ import annotations

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
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
BASE = "org/base-llama"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TOKEN = "moderator-secret-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ["HUBGUARD_SCREENSHOTS"]) if os.environ.get("HUBGUARD_SCREENSHOTS") else tmp_path_factory.mktemp("shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def finetune_of(base: Path, out: Path, *, card: str | None = None) -> Path:
    shutil.copytree(base, out)
    tensors = load_file(str(out / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    save_file({k: t + 0.2 * t.std() * torch.randn(t.shape, generator=g) if t.dim() == 2 else t for k, t in tensors.items()},
              str(out / "model.safetensors"))
    if card is not None:
        (out / "README.md").write_text(card)
    return out


@pytest.fixture(scope="module")
def models(family_models, bpe_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """A registry holding one tiny llama (and a flagged upload in its verdict log), a fine-tune of it without a
    card, one whose card declares a base that is not registered, an unrelated model, and audit adapters."""
    from tests.support.adapters import causal_base_and_adapters

    root = tmp_path_factory.mktemp("space")
    reg = Registry(root / "registry")
    reg.add(family_models["llama"][0], name=BASE, family="llama", license="apache-2.0", notes="the test base")
    shipped = Registry(Path(__file__).resolve().parents[1] / "registry")  # the shipped MiniLM, for the examples
    reg.add(shipped.fingerprint(MINILM), name=MINILM, family="bert", license="apache-2.0")
    reg.log_verdict(repo_id="someone/sneaky-finetune", match=BASE, verdict="derivative", score=97.0, z=12.0, source="webhook")
    out = {"registry": root / "registry", "base": family_models["llama"][0], "other": family_models["llama"][1],
           "finetune": finetune_of(family_models["llama"][0], root / "finetune"),
           "liar": finetune_of(family_models["llama"][0], root / "liar",
                               card="---\nbase_model: someone/unregistered-base\n---\n# a fine-tune\n")}
    audit = causal_base_and_adapters(root / "audit", tokenizer_json=bpe_tokenizer)
    return out | {f"audit_{k}": v for k, v in audit.items()}


@pytest.fixture(scope="module")
def space(models) -> Iterator[tuple[str, object]]:
    from hubguard.spaceapp.app import build_demo, launch
    from hubguard.spaceapp.state import SpaceState

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUBGUARD_MODERATOR_TOKEN", TOKEN)
        state = SpaceState(models["registry"])
    port = free_port()
    demo = launch(build_demo(state=state), server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", state
    finally:
        demo.close()
        state.close()


def field(page, elem_id: str):  # noqa: ANN001, ANN201 - a Playwright locator
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def run_check(page, source: str, *, error: bool = False) -> object:  # noqa: ANN001
    """Type SOURCE, click Check, and wait for *its* card (an error card when `error`), never the previous one."""
    card = page.locator("#hg-verdict-card")
    before = card.evaluate("c => c.outerHTML") if card.count() else ""
    field(page, "hg-source").fill(source)
    page.locator("#hg-check").click()
    name = Path(source).name
    want = "c.dataset.state === 'error'" if error else f"(c.dataset.source || '').endsWith({name!r})"
    page.wait_for_function(
        f"(() => {{ const c = document.querySelector('#hg-verdict-card'); return c && c.outerHTML !== {before!r} && {want}; }})()",
        timeout=90_000)
    return card


def no_horizontal_overflow(page) -> bool:  # noqa: ANN001
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_lineage_tab(browser, space, models, shots) -> None:
    url, _ = space
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url, wait_until="networkidle")
        card = run_check(page, str(models["finetune"]))
        assert card.get_attribute("data-verdict") == "derivative"
        assert BASE in card.inner_text() and "undeclared" in card.inner_text()
        page.wait_for_function("document.querySelectorAll('#hg-dogs img').length >= 2", timeout=15_000)
        for fig in page.locator("#hg-dogs figure").all():  # dogs at >= 256 px, captions below the picture
            img, cap = fig.locator("img").bounding_box(), fig.locator("figcaption").bounding_box()
            assert img["width"] >= 256 and img["height"] >= 256 and cap["y"] >= img["y"] + img["height"] - 1
        assert BASE in page.locator("#hg-dogs").inner_text() and BASE in page.locator("#hg-layers").inner_text()
        assert "How to read this" in page.content()
        page.screenshot(path=str(shots / "lineage-derivative.png"), full_page=True)
        # A path that does not exist: an error card replaces the verdict (no stale red card, no bare "Error").
        card = run_check(page, "/nonexistent/model", error=True)
        assert card.get_attribute("data-state") == "error" and "is not a folder" in card.inner_text()
        assert "What to do" in card.inner_text() and "Traceback" not in page.content()
        assert page.locator("#hg-dogs img").count() == 0
        page.screenshot(path=str(shots / "lineage-error.png"), full_page=True)
        # The registered base itself, and a card whose base_model the weights contradict.
        card = run_check(page, str(models["base"]))
        assert card.get_attribute("data-verdict") == "registered base" and "undeclared" not in card.inner_text(), card.inner_text()
        card = run_check(page, str(models["liar"]))
        contradicted = page.locator("#hg-verdict-card tr[data-status='error']", has_text="someone/unregistered-base")
        assert contradicted.count() == 1 and BASE in contradicted.inner_text()
        page.screenshot(path=str(shots / "lineage-contradicted.png"), full_page=True)
        # On a phone: one column of dogs, still >= 256 px, nothing wider than the screen.
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(500)
        img = page.locator("#hg-dogs img").first.bounding_box()
        assert img["width"] >= 256 and img["x"] >= 0 and img["x"] + img["width"] <= 390
        assert no_horizontal_overflow(page)
        page.screenshot(path=str(shots / "lineage-390px.png"), full_page=True)
    finally:
        page.close()


def test_examples_are_click_to_try(browser, space, shots) -> None:
    url, _ = space
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url, wait_until="networkidle")
        page.locator("#hg-example-derivative").click()
        page.wait_for_function("(document.querySelector('#hg-verdict-card').dataset.source || '').includes('derivative')",
                               timeout=180_000)
        card = page.locator("#hg-verdict-card")
        assert card.get_attribute("data-verdict") == "derivative" and "all-MiniLM-L6-v2" in card.inner_text()
        page.screenshot(path=str(shots / "example-derivative.png"), full_page=True)
    finally:
        page.close()


def test_compare_tab(browser, space, models, shots) -> None:
    url, _ = space
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url, wait_until="networkidle")
        page.get_by_role("tab", name="Compare two models").click()
        field(page, "hg-a").fill(str(models["base"]))
        field(page, "hg-b").fill(str(models["finetune"]))
        page.locator("#hg-compare").click()
        page.wait_for_selector("#hg-compare-card[data-state='result']", timeout=60_000)
        card = page.locator("#hg-compare-card")
        assert card.get_attribute("data-verdict") == "derivative" and "B derives from A" in card.inner_text()
        assert page.locator("#hg-cmp-dogs img").count() == 2
        page.screenshot(path=str(shots / "compare.png"), full_page=True)
        field(page, "hg-b").fill(str(models["other"]))
        page.locator("#hg-compare").click()
        page.wait_for_selector("#hg-compare-card[data-verdict='independent']", timeout=60_000)
    finally:
        page.close()


def test_registry_tab(browser, space, shots) -> None:
    url, _ = space
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url, wait_until="networkidle")
        page.get_by_role("tab", name="Registry").click()
        page.wait_for_function(f"document.querySelector('#hg-entries').innerText.includes('{BASE}')", timeout=15_000)
        assert "apache-2.0" in page.locator("#hg-entries").inner_text()
        page.locator("#hg-entries").get_by_text(BASE).filter(visible=True).first.click()
        detail = page.locator("#hg-entry-detail")
        page.wait_for_selector(f"#hg-entry-detail[data-entry='{BASE}']", timeout=60_000)
        text = detail.inner_text()
        assert "someone/sneaky-finetune" in text and "the test base" in text and detail.locator("img").count() == 1
        page.screenshot(path=str(shots / "registry-detail.png"), full_page=True)
        field(page, "hg-query").fill("no-such-model")
        field(page, "hg-query").press("Enter")
        page.wait_for_selector("#hg-page-status[data-total='0']", timeout=15_000)
        assert "No entry matches" in page.locator("#hg-page-status").inner_text()
        assert not page.locator("#hg-entries").is_visible()  # no bare headers
    finally:
        page.close()


def test_moderation_tab(browser, space, shots) -> None:
    url, state = space
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url, wait_until="networkidle")
        page.get_by_role("tab", name="Moderation").click()
        # Anonymous: the queue stays closed and a confirm is refused by the server.
        field(page, "hg-review-repo").fill("someone/sneaky-finetune")
        page.locator("#hg-confirm").click()
        page.wait_for_selector("#hg-mod-done[data-state='error']", timeout=15_000)
        assert "Only moderators" in page.locator("#hg-mod-done").inner_text()
        assert not [v for v in state.registry.verdicts() if v["source"] == "moderator"]
        page.screenshot(path=str(shots / "moderation-refused.png"), full_page=True)
        # The moderator token (the local path): the queue opens, a flag is confirmed with a note.
        field(page, "hg-mod-token").fill(TOKEN)
        field(page, "hg-mod-token").press("Enter")
        page.wait_for_function("document.querySelector('#hg-flagged').innerText.includes('someone/sneaky-finetune')",
                               timeout=15_000)
        assert page.locator("#hg-mod-status").get_attribute("data-moderator") == "local-moderator"
        page.locator("#hg-flagged").get_by_text("someone/sneaky-finetune").filter(visible=True).first.click()
        page.wait_for_function("document.querySelector('#hg-review-repo textarea, #hg-review-repo input').value"
                               " === 'someone/sneaky-finetune'", timeout=15_000)
        field(page, "hg-review-note").fill("weights match; uploader told")
        page.locator("#hg-confirm").click()
        page.wait_for_selector("#hg-mod-done[data-state='done']", timeout=15_000)
        page.screenshot(path=str(shots / "moderation-confirmed.png"), full_page=True)
        decision = [v for v in state.registry.verdicts(repo_id="someone/sneaky-finetune") if v["source"] == "moderator"]
        assert len(decision) == 1 and decision[0]["logged_by"] == "local-moderator" and not decision[0]["flagged"]
        assert "weights match; uploader told" in decision[0]["reason"] and decision[0]["verdict"] == "derivative"
        assert "someone/sneaky-finetune" not in page.locator("#hg-flagged").inner_text()  # off the queue
    finally:
        page.close()


def test_protection_audit_tab(browser, space, models, shots) -> None:
    url, _ = space
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url, wait_until="networkidle")
        page.get_by_role("tab", name="Protection audit").click()
        page.locator("#hg-audit-files input[type=file]").set_input_files(
            [str(models["audit_locked"] / "adapter_config.json"), str(models["audit_locked"] / "adapter_model.safetensors")])
        field(page, "hg-audit-base").fill(str(models["audit_base"]))
        page.wait_for_timeout(1000)
        page.locator("#hg-audit").click()
        page.wait_for_selector("#hg-audit-card[data-state='result'], #hg-audit-card[data-state='error']", timeout=300_000)
        assert page.locator("#hg-audit-card").get_attribute("data-verdict") == "looks protected"
        page.wait_for_selector("#hg-audit-plot img", timeout=15_000)
        page.screenshot(path=str(shots / "audit-locked.png"), full_page=True)
    finally:
        page.close()
