"""hubguard Space: lineage checks with dog fingerprints, pairwise comparisons, and the registry for moderators.

Run locally: `python space/app.py` (registry: HUBGUARD_REGISTRY, default the shipped one). On a Space only
`hf://` sources are accepted; locally, folders and `.safetensors` files work too.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from hubguard import constants
from hubguard.errors import HubguardError, SourceError
from hubguard.utils import get_logger

if TYPE_CHECKING:
    from PIL import Image

    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.registry import Registry

logger = get_logger("hubguard.space")

TITLE = "hubguard · model lineage"
ON_SPACE = constants.SPACE_ID is not None
VERDICT_COLOURS = {"derivative": "#b42318", "inconclusive": "#b54708", "independent": "#067647"}
ENTRY_COLUMNS = ["name", "family", "license", "parameters", "added"]
FLAGGED_COLUMNS = ["logged", "repo", "revision", "match", "score", "z", "reason", "source"]
LAYER_COLUMNS = ["layer", "source", "source layer", "score", "z"]
DOG_SIZE = 256

CSS = """
.gradio-container {max-width: 1180px !important; margin: auto;}
#hg-header h1 {margin-bottom: 0.1em;}
#hg-header p {color: var(--body-text-color-subdued); margin-top: 0;}
.hg-card {border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 16px 20px;
          background: var(--block-background-fill);}
.hg-verdict {display: inline-block; padding: 4px 14px; border-radius: 999px; color: white; font-weight: 700;
             font-size: 1.15em; letter-spacing: 0.02em;}
.hg-grid {display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 10px; margin: 14px 0;}
.hg-stat {background: var(--background-fill-secondary); border-radius: 8px; padding: 8px 12px;}
.hg-stat b {display: block; font-size: 1.35em;}
.hg-stat span {font-size: 0.85em; color: var(--body-text-color-subdued);}
.hg-lineage {border-collapse: collapse; margin-top: 4px;}
.hg-card table.hg-lineage, .hg-card .hg-lineage td, .hg-card .hg-lineage th {border: none !important;}
.hg-card .hg-lineage td, .hg-card .hg-lineage th {padding: 5px 12px; text-align: left;
  border-bottom: 1px solid var(--border-color-primary) !important;}
#hg-gallery .caption-label, #hg-cmp-gallery .caption-label {white-space: normal;}
.hg-ok {color: #067647; font-weight: 600;} .hg-bad {color: #b42318; font-weight: 600;}
.hg-muted {color: var(--body-text-color-subdued);}
"""


# --- helpers -----------------------------------------------------------------------------------------------------


def open_registry(path: "str | os.PathLike[str] | None" = None) -> "Registry":
    from hubguard.registry import Registry

    return Registry(path or constants.hubguard_registry())


def _fail(err: BaseException) -> gr.Error:
    """A UI error with hubguard's own message (never a traceback)."""
    if isinstance(err, HubguardError):
        return gr.Error(str(err), title=type(err).__name__)
    logger.exception("unexpected error in the Space")
    return gr.Error(f"Unexpected {type(err).__name__}: {err}", title="Unexpected error")


def _source(text: str | None, what: str = "a model") -> str:
    spec = (text or "").strip()
    if not spec:
        raise SourceError(f"Enter {what}: hf://ORG/NAME[@REVISION]" + ("" if ON_SPACE else ", a local folder or a .safetensors file") + ".")
    if ON_SPACE and not spec.startswith("hf://") and not spec.endswith(".safetensors"):
        spec = f"hf://{spec}" if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) else spec
    if ON_SPACE and not spec.startswith("hf://"):
        raise SourceError(f"'{spec}' is not a Hub source. On the Space, write hf://ORG/NAME or hf://ORG/NAME@REVISION.")
    return spec


def _term_map(fp: "Fingerprint", size: int) -> "Image.Image":
    """Fallback portrait when the dog renderer is unavailable: the first layer's attention QK invariant as a heat map."""
    import numpy as np
    from PIL import Image

    term = fp.terms.get("attn_qk") if "attn_qk" in fp.terms else next(iter(fp.terms.values()))
    m = term[0].float().numpy()
    lo, hi = np.percentile(m, [2, 98])
    x = np.clip((m - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.stack([0.15 + 0.85 * x, 0.25 + 0.5 * x * (1 - x) * 2, 0.55 * (1 - x) + 0.1], axis=-1)
    return Image.fromarray((rgb * 255).astype("uint8")).resize((size, size), Image.NEAREST)


def portrait(fp: "Fingerprint", notes: list[str]) -> "Image.Image":
    """The model's dog; its term map (with a note) when the dog renderer cannot run here."""
    from hubguard.portraits.dogs import dog_image

    try:
        return dog_image(fp, size=DOG_SIZE)
    except (HubguardError, ImportError) as err:
        if not notes:
            logger.warning("dog portraits unavailable: %s", err)
            notes.append("Dog portraits are unavailable on this install; showing each model's attention invariant map.")
        return _term_map(fp, DOG_SIZE)


def _short(name: str) -> str:
    """A caption-sized model name: the repo id of hf:// sources, the folder name of local paths."""
    if name.startswith("hf://"):
        return name[5:]
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return Path(name).name or name
    return name


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def _fpr(x: float | None) -> str:
    if x is None:
        return "—"
    return "< 0.0001" if x < 1e-4 else f"{x:.4f}"


def verdict_card(*, source: str, best: dict[str, Any] | None, declared: dict[str, Any], found: list[str],
                 registered: set[str]) -> str:
    """HTML: verdict, score, z, false-positive rate, declared base_model vs found bases."""
    verdict = best["verdict"] if best else "independent"
    colour = VERDICT_COLOURS.get(verdict, "#475467")
    headline = (f"derivative of <b>{html.escape(', '.join(found))}</b>" if found else
                f"closest entry <b>{html.escape(best['name'])}</b>" if best else "no registry entry resembles these weights")
    stats = "".join(
        f'<div class="hg-stat"><span>{k}</span><b>{v}</b></div>'
        for k, v in (("score (0–100)", _fmt(best and best["score"])), ("z vs. null", _fmt(best and best["z"])),
                     ("false-positive rate", _fpr(best and best.get("false_positive_rate"))),
                     ("matched layers", str(best["matched_layers"]) if best else "—"))
    )
    rows = []
    for base in declared["base_model"]:
        if base in found:
            status = '<span class="hg-ok">confirmed by the weights</span>'
        elif base in registered:
            status = '<span class="hg-bad">not found in the weights</span>'
        else:
            status = '<span class="hg-muted">not in the registry (unverifiable)</span>'
        rows.append(f"<tr><td>declared</td><td><code>{html.escape(base)}</code></td><td>{status}</td></tr>")
    for base in found:
        if base not in declared["base_model"]:
            rows.append(f'<tr><td>found</td><td><code>{html.escape(base)}</code></td>'
                        f'<td><span class="hg-bad">undeclared — add <code>base_model: {html.escape(base)}</code></span></td></tr>')
    if not rows:
        rows.append('<tr><td colspan="3" class="hg-muted">no base_model declared, none found</td></tr>')
    relation = declared.get("base_model_relation") or "—"
    return (
        f'<div class="hg-card" id="hg-verdict-card" data-verdict="{verdict}">'
        f'<span class="hg-verdict" style="background:{colour}">{verdict}</span>'
        f'<span style="margin-left:12px">{headline}</span>'
        f'<div class="hg-muted" style="margin-top:6px">{html.escape(source)}</div>'
        f'<div class="hg-grid">{stats}</div>'
        f'<table class="hg-lineage"><tr><th></th><th>base model</th><th>status</th></tr>{"".join(rows)}</table>'
        f'<div class="hg-muted" style="margin-top:8px">declared relation: {html.escape(str(relation))}</div></div>'
    )


# --- handlers ----------------------------------------------------------------------------------------------------


def check_lineage(source: str, top_k: float, registry_path: str | None = None, progress: gr.Progress = gr.Progress()):  # noqa: B008
    """Tab 1: the pre-upload check (`hubguard.hooks.check.check_upload`: the one verification pipeline)."""
    try:
        from hubguard.hooks.check import check_upload

        spec = _source(source)
        reg = open_registry(registry_path)
        progress(0.1, desc="Fingerprinting (invariant terms, layer by layer) and searching the registry")
        report = check_upload(spec, registry=reg, top_k=int(top_k))
        if report.status == "unreadable":
            raise SourceError(f"{report.reason} Fix: {report.fix}")
        matches, found, declared = report.matches, report.found_bases, report.declared
        table = [[s["layer"], s["source"] or "— (no match)", "—" if s["match"] is None else s["match"], round(s["score"], 1),
                  round(s["z"], 1)] for s in report.layers]
        progress(0.85, desc="Drawing fingerprints")
        notes: list[str] = []
        gallery = [(portrait(report.fingerprint, notes), f"query · {_short(spec)}")]
        for m in matches:
            gallery.append((portrait(reg.fingerprint(m["name"]), notes), f"{m['name']} · {m['verdict']} · score {m['score']:.1f}"))
        for n in notes:
            gr.Warning(n)
        card = verdict_card(source=spec, best=matches[0] if matches else None, declared=declared, found=found,
                            registered=set(reg.names()))
        summary = {"source": spec, "status": report.status, "declared": declared, "found_bases": found,
                   "matches": [{k: v for k, v in m.items() if k not in {"layers", "entry"}} for m in matches]}
        return card, gallery, table, summary
    except Exception as err:  # noqa: BLE001 - everything reaches the user as a message
        raise _fail(err) from None


def compare_models(a: str, b: str, progress: gr.Progress = gr.Progress()):  # noqa: B008
    """Tab 2: compare reference A with candidate B."""
    try:
        from hubguard.lineage.api import compare_with_fingerprints

        spec_a, spec_b = _source(a, "model A"), _source(b, "model B")
        progress(0.05, desc="Fingerprinting A and B, then verifying B against A")
        fa, fb, c = compare_with_fingerprints(spec_a, spec_b)
        notes: list[str] = []
        gallery = [(portrait(fa, notes), f"A · {_short(fa.name)}"),
                   (portrait(fb, notes), f"B · {_short(fb.name)} · {c.verdict} · score {c.score:.1f}")]
        for n in notes:
            gr.Warning(n)
        d = c.to_dict()
        summary = {k: d[k] for k in ("verdict", "score", "z", "false_positive_rate", "terms", "matched_layers", "common_tokens", "notes")}
        summary |= {"a": fa.name, "b": fb.name}
        table = [[m.layer, m.match, round(m.score, 1), round(m.z, 1)] for m in c.layers]
        return summary, gallery, table
    except Exception as err:  # noqa: BLE001
        raise _fail(err) from None


def registry_tables(text: str | None, family: str | None, license_: str | None, registry_path: str | None = None):
    """Tab 3: the entries (filtered), the family/licence choices and the flagged uploads."""
    try:
        reg = open_registry(registry_path)
        everything = reg.list()
        entries = reg.list(text=text or None, family=None if family in (None, "", "all") else family,
                           license=None if license_ in (None, "", "all") else license_)
        rows = [[e.name, e.family or "", e.license or "", e.parameters or 0, (e.added_at or "")[:10]] for e in entries]
        families = ["all"] + sorted({e.family for e in everything if e.family})
        licenses = ["all"] + sorted({e.license for e in everything if e.license})
        flagged = [[(v["logged_at"] or "")[:19], v["repo_id"], (v["revision"] or "")[:10], v["match"] or "",
                    v["score"], v["z"], v["reason"] or "", v["source"]] for v in reg.flagged()]
        return (rows, gr.update(choices=families), gr.update(choices=licenses), flagged,
                gr.update(choices=[e.name for e in everything]))
    except Exception as err:  # noqa: BLE001
        raise _fail(err) from None


def derivatives(name: str | None, registry_path: str | None = None):
    try:
        if not name:
            raise SourceError("Pick a registry entry to list its known derivatives.")
        reg = open_registry(registry_path)
        reg.show(name)
        return [[d["repo_id"], d["via"], d.get("score"), d.get("z"), d.get("relation") or "", bool(d.get("flagged"))]
                for d in reg.derivatives_of(name)]
    except Exception as err:  # noqa: BLE001
        raise _fail(err) from None


# --- layout ------------------------------------------------------------------------------------------------------


def build_demo(registry: "str | os.PathLike[str] | None" = None) -> gr.Blocks:
    """The Space. `registry` overrides HUBGUARD_REGISTRY (default: the shipped registry)."""
    reg_path = os.fspath(registry) if registry is not None else None
    reg = open_registry(reg_path)
    placeholder = "hf://ORG/NAME[@REVISION]" + ("" if ON_SPACE else "  or  /path/to/model-folder")
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nDoes a model derive from a registered base? hubguard reads a few tensors, computes weight "
            f"invariants that survive permutations, rotations, rescaling and fine-tuning, and compares them with "
            f"the registry ({len(reg)} base models). Each model's fingerprint is drawn as a dog: related models look alike.",
            elem_id="hg-header",
        )
        with gr.Tab("Lineage check"):
            with gr.Row(equal_height=True):
                src = gr.Textbox(label="Model", placeholder=placeholder, scale=5, elem_id="hg-source")
                with gr.Column(scale=1, min_width=200):
                    go = gr.Button("Check lineage", variant="primary", elem_id="hg-check")
                    top_k = gr.Slider(1, 10, value=5, step=1, label="registry matches", show_label=True)
            card = gr.HTML('<div class="hg-card hg-muted">The verdict appears here.</div>', elem_id="hg-card")
            gallery = gr.Gallery(label="Fingerprints: the query and its closest registry entries", columns=6, height=270,
                                 object_fit="contain", elem_id="hg-gallery", interactive=False, fit_columns=False)
            layers = gr.Dataframe(headers=LAYER_COLUMNS, label="Per-layer provenance (candidate layer → best registry layer)",
                                  interactive=False, elem_id="hg-layers")
            with gr.Accordion("Raw report (JSON)", open=False):
                report = gr.JSON()
            run = lambda s, k, progress=gr.Progress(): check_lineage(s, k, reg_path, progress)  # noqa: B008, E731
            go.click(run, [src, top_k], [card, gallery, layers, report], api_name="check")
            src.submit(run, [src, top_k], [card, gallery, layers, report])
        with gr.Tab("Compare two models"):
            with gr.Row(equal_height=True):
                a = gr.Textbox(label="A (reference)", placeholder=placeholder + "  or  a .fp.safetensors file", scale=3)
                b = gr.Textbox(label="B (candidate)", placeholder=placeholder, scale=3)
                cmp_go = gr.Button("Compare", variant="primary", scale=1, elem_id="hg-compare")
            with gr.Row():
                cmp_gallery = gr.Gallery(label="A and B", columns=2, height=330, object_fit="contain", scale=1,
                                         interactive=False, elem_id="hg-cmp-gallery")
                cmp_json = gr.JSON(label="Comparison", scale=1, elem_id="hg-cmp-json")
            cmp_layers = gr.Dataframe(headers=["B layer", "best A layer", "score", "z"], label="Layer matching (each layer of B → its best layer of A)", interactive=False)
            cmp_go.click(compare_models, [a, b], [cmp_json, cmp_gallery, cmp_layers], api_name="compare")
        with gr.Tab("Registry"):
            with gr.Row(equal_height=True):
                text = gr.Textbox(label="Search names, repos and notes", scale=3)
                family = gr.Dropdown(["all"], value="all", label="Family", scale=1)
                lic = gr.Dropdown(["all"], value="all", label="Licence", scale=1)
                refresh = gr.Button("Refresh", scale=1)
            entries = gr.Dataframe(headers=ENTRY_COLUMNS, label="Registered base models", interactive=False,
                                   show_search="search", max_height=420, elem_id="hg-entries")
            with gr.Row(equal_height=True):
                base = gr.Dropdown([], label="Derivatives of", scale=3, elem_id="hg-base")
                deriv_go = gr.Button("List derivatives", scale=1)
            deriv = gr.Dataframe(headers=["repo", "via", "score", "z", "relation", "flagged"], interactive=False,
                                 label="Known derivatives (verdict log and declared bases)")
            flagged = gr.Dataframe(headers=FLAGGED_COLUMNS, interactive=False, label="Flagged uploads (newest first)",
                                   elem_id="hg-flagged")
            tables = lambda t, f, li: registry_tables(t, f, li, reg_path)  # noqa: E731
            outs = [entries, family, lic, flagged, base]
            for trigger in (refresh.click, text.submit, family.change, lic.change):
                trigger(tables, [text, family, lic], outs)
            demo.load(tables, [text, family, lic], outs)
            deriv_go.click(lambda n: derivatives(n, reg_path), [base], [deriv])
    return demo


def launch(demo: gr.Blocks | None = None, **kwargs: Any) -> gr.Blocks:
    """Launch with the Space's theme and CSS (gradio 6: both are launch() arguments)."""
    demo = demo or build_demo()
    theme = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")
    demo.queue(default_concurrency_limit=2).launch(theme=theme, css=CSS, **kwargs)
    return demo


if __name__ == "__main__":
    launch()
