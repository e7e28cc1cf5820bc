"""Build and launch the Space: `build_demo()` assembles the tabs around one `SpaceState`; `launch()` starts it
with the theme and CSS (gradio 6 takes both in `launch`)."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from hubguard.spaceapp import html
from hubguard.spaceapp.layout import TITLE, _check_tab, _compare_tab, _registry_tab
from hubguard.spaceapp.layout_admin import audit_tab, moderation_tab
from hubguard.spaceapp.state import SpaceState
from hubguard.spaceapp.style import CSS


def build_demo(registry: "str | os.PathLike[str] | None" = None, *, state: SpaceState | None = None) -> gr.Blocks:
    """The Space. `registry` overrides HUBGUARD_REGISTRY (a folder or hf://datasets/ORG/NAME[@REV])."""
    state = state or SpaceState(registry)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nDoes a model derive from a registered base? hubguard reads a few tensors, computes weight "
            "invariants that survive permutations, rotations, rescaling and fine-tuning, and compares them with "
            f"the registry ({len(state.registry)} base models, {html.esc(state.where())}). Each model's fingerprint "
            "is drawn as a dog: related models look alike.",
            elem_id="hg-header",
        )
        with gr.Tab("Lineage check", id="check"):
            _check_tab(state)
        with gr.Tab("Compare two models", id="compare"):
            _compare_tab()
        with gr.Tab("Registry", id="registry") as registry_tab:
            _registry_tab(state, opened=registry_tab)
        with gr.Tab("Moderation", id="moderation") as moderation:
            moderation_tab(state, opened=moderation)
        with gr.Tab("Protection audit", id="audit"):
            audit_tab()
    demo.hubguard_state = state  # type: ignore[attr-defined]  # for callers that close it (tests, benchmarks)
    return demo


def launch(demo: gr.Blocks | None = None, **kwargs: Any) -> gr.Blocks:
    """Launch with the Space's theme and CSS; on a Space, gradio picks host and port itself."""
    demo = demo or build_demo()
    theme = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")
    demo.queue(default_concurrency_limit=2).launch(theme=theme, css=CSS, **kwargs)
    return demo
