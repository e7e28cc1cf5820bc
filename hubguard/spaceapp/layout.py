"""The Space's Gradio UI: five tabs, every event a named API endpoint with typed, named parameters and a JSON
output (HTML cards are separate outputs). Handlers never raise: a user error becomes an error card and a JSON
`{"status": "error", ...}` in place of the previous result, and one log line.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from hubguard.errors import HubguardError
from hubguard.spaceapp import html
from hubguard.spaceapp.check_view import LAYER_COLUMNS, run_check
from hubguard.spaceapp.compare_view import LAYER_COLUMNS as CMP_COLUMNS
from hubguard.spaceapp.compare_view import run_compare
from hubguard.spaceapp.registry_view import ENTRY_COLUMNS, entry_detail, entry_page
from hubguard.spaceapp.sources import EXAMPLE_BASE, EXAMPLE_DERIVATIVE, EXAMPLES, hint
from hubguard.spaceapp.state import SpaceState
from hubguard.utils import get_logger

logger = get_logger("hubguard.space")

TITLE = "hubguard · model lineage"


def failure(err: BaseException, *, action: str) -> dict[str, Any]:
    """The JSON of a failed action; logs one line (a traceback only for what is a bug)."""
    if isinstance(err, HubguardError):
        logger.info("%s refused: %s: %s", action, type(err).__name__, err)
        return {"status": "error", "error": type(err).__name__, "message": str(err), "fix": err.fix}
    logger.exception("%s failed unexpectedly", action)
    return {"status": "error", "error": "InternalError", "message": f"{type(err).__name__}: {err}",
            "fix": "This is a bug in hubguard; please report it with the model you checked."}


def error_html(data: dict[str, Any], *, elem_id: str = "hg-verdict-card") -> str:
    return html.error_card(title=data["error"], message=data["message"], fix=data["fix"], elem_id=elem_id)


# --- tabs ----------------------------------------------------------------------------------------------------


def _check_tab(state: SpaceState) -> None:
    with gr.Row(equal_height=True):
        source = gr.Textbox(label="Model", placeholder=hint(), scale=5, elem_id="hg-source")
        with gr.Column(scale=1, min_width=200):
            go = gr.Button("Check lineage", variant="primary", elem_id="hg-check")
            top_k = gr.Slider(1, 10, value=5, step=1, label="Registry matches")
    with gr.Row():
        gr.Markdown("Try: ", elem_classes="hg-muted")
        ex_base = gr.Button(f"{EXAMPLE_BASE} — {EXAMPLES[EXAMPLE_BASE]}", size="sm", elem_id="hg-example-base")
        ex_deriv = gr.Button(f"{EXAMPLE_DERIVATIVE} — {EXAMPLES[EXAMPLE_DERIVATIVE]}", size="sm",
                             elem_id="hg-example-derivative")
    card = gr.HTML(html.placeholder("The verdict appears here."), label="Verdict card (HTML)", elem_id="hg-card")
    gr.HTML(html.how_to_read())
    dogs = gr.HTML(html.dog_grid([], elem_id="hg-dogs", empty="The dogs of the model and its matches appear here."),
                   label="Dog portraits (HTML)")
    layers = gr.Dataframe(headers=LAYER_COLUMNS, label="Per-layer provenance (each candidate layer → best registry layer)",
                          interactive=False, elem_id="hg-layers", elem_classes="hg-table", visible=False)
    with gr.Accordion("Report (JSON)", open=False):
        report = gr.JSON(label="Check report (JSON)", elem_id="hg-report")

    def check_lineage(model: str, top_k: float, progress: gr.Progress = gr.Progress()):  # noqa: B008
        """Check MODEL (hf://ORG/NAME[@REV] or an example) against the registry and its own model card."""
        try:
            v = run_check(state, source=model, top_k=int(top_k), progress=lambda f, d: progress(f, desc=d))
            return v.report, v.card, v.dogs, gr.Dataframe(value=v.layers, visible=bool(v.layers))
        except Exception as err:  # noqa: BLE001 - every failure reaches the user as a card
            data = failure(err, action="check_lineage")
            return data, error_html(data), html.dog_grid([], elem_id="hg-dogs"), gr.Dataframe(value=[], visible=False)

    outs = [report, card, dogs, layers]
    go.click(check_lineage, [source, top_k], outs, api_name="check_lineage")
    source.submit(check_lineage, [source, top_k], outs, api_name="check_lineage_on_enter", api_visibility="undocumented")

    def try_example(name: str):
        def handler(top_k: float, progress: gr.Progress = gr.Progress()):  # noqa: B008
            """Check the example (it also fills the Model box): one event, a single round trip to the server."""
            return (name, *check_lineage(name, top_k, progress))

        return handler

    for button, name, api in ((ex_base, EXAMPLE_BASE, "try_example_base"), (ex_deriv, EXAMPLE_DERIVATIVE, "try_example_derivative")):
        button.click(try_example(name), [top_k], [source, *outs], api_name=api)


def _compare_tab() -> None:
    with gr.Row(equal_height=True):
        a = gr.Textbox(label="A (reference)", placeholder=hint() + " or a .fp.safetensors file", scale=3, elem_id="hg-a")
        b = gr.Textbox(label="B (candidate)", placeholder=hint(), scale=3, elem_id="hg-b")
        go = gr.Button("Compare", variant="primary", scale=1, elem_id="hg-compare")
    card = gr.HTML(html.placeholder("The verdict appears here.", elem_id="hg-compare-card"), label="Verdict card (HTML)")
    gr.HTML(html.how_to_read())
    dogs = gr.HTML(html.dog_grid([], elem_id="hg-cmp-dogs", empty="A's and B's dogs appear here."),
                   label="Dog portraits (HTML)")
    layers = gr.Dataframe(headers=CMP_COLUMNS, label="Layer matching (each layer of B → its best layer of A)",
                          interactive=False, elem_id="hg-cmp-layers", elem_classes="hg-table", visible=False)
    with gr.Accordion("Comparison (JSON)", open=False):
        comparison = gr.JSON(label="Comparison (JSON)", elem_id="hg-cmp-json")

    def compare_models(reference: str, candidate: str):
        """Does CANDIDATE (B) derive from REFERENCE (A)? Score, z, false-positive rate, per-layer matching."""
        try:
            v = run_compare(reference=reference, candidate=candidate)
            return v.comparison, v.card, v.dogs, gr.Dataframe(value=v.layers, visible=bool(v.layers))
        except Exception as err:  # noqa: BLE001
            data = failure(err, action="compare_models")
            return (data, error_html(data, elem_id="hg-compare-card"), html.dog_grid([], elem_id="hg-cmp-dogs"),
                    gr.Dataframe(value=[], visible=False))

    go.click(compare_models, [a, b], [comparison, card, dogs, layers], api_name="compare_models")


def _registry_tab(state: SpaceState, *, opened: gr.Tab) -> None:
    """`opened`: the tab; its first page is read when the tab is opened (not on every page load)."""
    with gr.Row(equal_height=True):
        query = gr.Textbox(label="Search names, repos and notes", scale=3, elem_id="hg-query")
        family = gr.Dropdown(["all"], value="all", label="Family", scale=1, elem_id="hg-family")
        licence = gr.Dropdown(["all"], value="all", label="Licence", scale=1, elem_id="hg-licence")
        page = gr.Number(1, precision=0, minimum=1, label="Page", scale=1, elem_id="hg-page")
    status = gr.HTML(label="Page status (HTML)")
    entries = gr.Dataframe(headers=ENTRY_COLUMNS, label="Registered base models", interactive=False, max_height=460,
                           elem_id="hg-entries", elem_classes="hg-table")
    with gr.Row():
        prev_b, next_b = gr.Button("← previous", size="sm"), gr.Button("next →", size="sm")
    listing = gr.JSON(visible=False, label="Entries (JSON)")
    detail = gr.HTML(html.placeholder("Click a row to see the entry's dog, metadata and known derivatives.",
                                      elem_id="hg-entry-detail"), label="Entry detail (HTML)")
    detail_json = gr.JSON(visible=False, label="Entry (JSON)")

    def registry_search(query: str, family: str, licence: str, page: float):
        """One page (25 rows) of the entries whose name, repo or notes contain QUERY, filtered by family and licence."""
        try:
            p = entry_page(state.registry, text=query, family=family, license_=licence, page=int(page or 1))
            return (p.to_dict(), p.status(), gr.Dataframe(value=p.rows, visible=p.total > 0),
                    gr.Dropdown(choices=p.families, value=family if family in p.families else "all"),
                    gr.Dropdown(choices=p.licenses, value=licence if licence in p.licenses else "all"), p.page)
        except Exception as err:  # noqa: BLE001
            data = failure(err, action="registry_search")
            return data, error_html(data, elem_id="hg-page-status"), gr.Dataframe(visible=False), gr.Dropdown(), gr.Dropdown(), 1

    def registry_entry(name: str):
        """An entry's metadata, known derivatives (verdict log and declared bases), notes and dog."""
        try:
            return entry_detail(state.registry, name=name)
        except Exception as err:  # noqa: BLE001
            data = failure(err, action="registry_entry")
            return data, error_html(data, elem_id="hg-entry-detail")

    def select_row(evt: gr.SelectData):
        row = evt.row_value if getattr(evt, "row_value", None) else [evt.value]
        return registry_entry(str(row[0]))

    ins, outs = [query, family, licence, page], [listing, status, entries, family, licence, page]
    gr.on([query.submit, family.change, licence.change, page.submit], registry_search, ins, outs, api_name="registry_search")

    def registry_previous_page(query: str, family: str, licence: str, page: float):
        """The page before PAGE (one event: a single round trip to the server)."""
        return registry_search(query, family, licence, max(1, int(page or 1) - 1))

    def registry_next_page(query: str, family: str, licence: str, page: float):
        """The page after PAGE (clamped to the last page)."""
        return registry_search(query, family, licence, int(page or 1) + 1)

    prev_b.click(registry_previous_page, ins, outs, api_name="registry_previous_page", api_visibility="undocumented")
    next_b.click(registry_next_page, ins, outs, api_name="registry_next_page", api_visibility="undocumented")
    opened.select(registry_search, ins, outs, api_name="registry_search_on_open", api_visibility="undocumented")
    entries.select(select_row, None, [detail_json, detail], api_name="registry_row_selected", api_visibility="undocumented")

    def registry_entry_json(name: str) -> dict[str, Any]:
        """An entry's metadata and known derivatives (JSON)."""
        try:
            return entry_detail(state.registry, name=name, with_dog=False)[0]
        except Exception as err:  # noqa: BLE001
            return failure(err, action="registry_entry")

    gr.api(registry_entry_json, api_name="registry_entry")
