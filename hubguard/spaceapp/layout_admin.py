"""The moderation and protection-audit tabs. Moderator endpoints check the caller on the server
(`Moderators.require`): the Hub OAuth profile gradio injects from the session, or the moderator token typed in
the tab; an anonymous or non-moderator call, through the UI or the API, is refused with a JSON error."""

from __future__ import annotations

from typing import Any

import gradio as gr

from hubguard.spaceapp import html, moderation
from hubguard.spaceapp.audit_view import run_audit
from hubguard.spaceapp.layout import error_html, failure
from hubguard.spaceapp.state import SpaceState


def _status(state: SpaceState, profile: Any, token: str | None) -> str:
    who = state.moderators.identify(profile=profile, token=token)
    how = "Hub OAuth" if who and profile is not None and who != state.moderators.token_name else "moderator token"
    return html.moderator_status(who=who, how=how if who else state.moderators.describe())


def _registry_controls() -> tuple[Any, ...]:
    """The moderators' registry controls: add / remove an entry, mark a known derivative."""
    with gr.Accordion("Registry entries and known derivatives", open=False):
        with gr.Row(equal_height=True):
            src = gr.Textbox(label="Base model to add (hf://ORG/NAME)", scale=3, elem_id="hg-add-source")
            name = gr.Textbox(label="Entry name (default: the repo id)", scale=2, elem_id="hg-add-name")
            fam = gr.Textbox(label="Family", scale=1)
            lic = gr.Textbox(label="Licence", scale=1)
        notes = gr.Textbox(label="Notes")
        with gr.Row():
            add_b = gr.Button("Add entry", elem_id="hg-add")
            remove_b = gr.Button("Remove entry named above", variant="stop", elem_id="hg-remove")
        with gr.Row(equal_height=True):
            deriv = gr.Textbox(label="Derivative repo (ORG/NAME)", elem_id="hg-mark-repo")
            base = gr.Textbox(label="…derives from registry entry", elem_id="hg-mark-base")
            mark_b = gr.Button("Mark known derivative", elem_id="hg-mark")
    return src, name, fam, lic, notes, add_b, remove_b, deriv, base, mark_b


def moderation_tab(state: SpaceState, *, opened: gr.Tab) -> None:
    """`opened`: the tab; the flagged queue is read when it is opened (or a token is given), not on every page load."""
    mods = state.moderators
    gr.Markdown(f"Registry: **{html.esc(state.where())}**. {html.esc(mods.describe())}")
    with gr.Row(equal_height=True):
        if mods.oauth:
            gr.LoginButton(elem_id="hg-login")
        token = gr.Textbox(label="Moderator token", type="password", visible=mods.token is not None or not mods.oauth,
                           elem_id="hg-mod-token", scale=3)
        who = gr.HTML(html.moderator_status(who=None, how=mods.describe()), label="Moderator (HTML)")
    queue = gr.Dataframe(headers=moderation.QUEUE_COLUMNS, label="Flagged uploads waiting for review (newest first)",
                         interactive=False, elem_id="hg-flagged", elem_classes="hg-table")
    with gr.Row(equal_height=True):
        repo = gr.Textbox(label="Repo (click a row above)", elem_id="hg-review-repo", scale=2)
        note = gr.Textbox(label="Note", elem_id="hg-review-note", scale=3)
        confirm = gr.Button("Confirm flag", variant="stop", elem_id="hg-confirm", scale=1)
        dismiss = gr.Button("Dismiss", elem_id="hg-dismiss", scale=1)
    src, name, fam, lic, notes, add_b, remove_b, deriv, base, mark_b = _registry_controls()
    outcome = gr.HTML(label="Outcome (HTML)", elem_id="hg-mod-outcome")
    outcome_json = gr.JSON(label="Outcome (JSON)", visible=False)

    def flagged_queue(moderator_token: str, profile: gr.OAuthProfile | None = None):
        """The flagged uploads no moderator has decided on yet (moderators only)."""
        try:
            state.moderators.require(profile=profile, token=moderator_token, action="see the flagged queue")
            q = moderation.flagged_queue(state)
            return {"status": "ok", "flagged": q}, moderation.queue_rows(q), _status(state, profile, moderator_token)
        except Exception as err:  # noqa: BLE001
            data = failure(err, action="flagged_queue")
            return data, [], _status(state, profile, moderator_token)

    def _act(action: str, fn: Any, moderator_token: str, profile: Any, **kw: Any):
        try:
            who = state.moderators.require(profile=profile, token=moderator_token, action=action)
            row = fn(state, moderator=who, **kw)
            text = f'<div class="hg-card" data-state="done" id="hg-mod-done">Done: {html.esc(action)} (by {html.esc(who)}).</div>'
            return {"status": "ok", "by": who, "result": row}, text, moderation.queue_rows(moderation.flagged_queue(state))
        except Exception as err:  # noqa: BLE001
            data = failure(err, action=action)
            return data, error_html(data, elem_id="hg-mod-done"), gr.Dataframe()

    def confirm_flag(repo_id: str, note: str, moderator_token: str, profile: gr.OAuthProfile | None = None):
        """Confirm the waiting flag of REPO_ID with a NOTE: a derivative, as flagged (moderators only)."""
        return _act(f"confirm the flag of {repo_id}", moderation.decide, moderator_token, profile, repo_id=repo_id,
                    decision="confirm", note=note)

    def dismiss_flag(repo_id: str, note: str, moderator_token: str, profile: gr.OAuthProfile | None = None):
        """Dismiss the waiting flag of REPO_ID with a NOTE saying why (moderators only)."""
        return _act(f"dismiss the flag of {repo_id}", moderation.decide, moderator_token, profile, repo_id=repo_id,
                    decision="dismiss", note=note)

    def mark_derivative(repo_id: str, base: str, note: str, moderator_token: str, profile: gr.OAuthProfile | None = None):
        """Record that REPO_ID derives from registry entry BASE (moderators only)."""
        return _act(f"mark {repo_id} as a derivative of {base}", moderation.mark_derivative, moderator_token, profile,
                    repo_id=repo_id, base=base, note=note)

    def add_entry(source: str, name: str, family: str, licence: str, notes: str, moderator_token: str,
                  profile: gr.OAuthProfile | None = None):
        """Fingerprint SOURCE and register it as base model NAME (moderators only)."""
        return _act(f"add {name or source} to the registry", moderation.add_entry, moderator_token, profile,
                    source=source, name=name, family=family, license_=licence, notes=notes)

    def remove_entry(name: str, moderator_token: str, profile: gr.OAuthProfile | None = None):
        """Remove registry entry NAME and its verification data (moderators only)."""
        return _act(f"remove {name} from the registry", moderation.remove_entry, moderator_token, profile, name=name)

    acted = [outcome_json, outcome, queue]
    gr.on([token.submit, opened.select], flagged_queue, token, [outcome_json, queue, who], api_name="flagged_queue")
    confirm.click(confirm_flag, [repo, note, token], acted, api_name="confirm_flag")
    dismiss.click(dismiss_flag, [repo, note, token], acted, api_name="dismiss_flag")
    mark_b.click(mark_derivative, [deriv, base, note, token], acted, api_name="mark_derivative")
    add_b.click(add_entry, [src, name, fam, lic, notes, token], acted, api_name="add_entry")
    remove_b.click(remove_entry, [name, token], acted, api_name="remove_entry")

    def pick_flag(evt: gr.SelectData):
        row = evt.row_value if getattr(evt, "row_value", None) else [None, evt.value]
        return row[1]

    queue.select(pick_flag, None, repo, api_name="flag_row_selected", api_visibility="undocumented")


def audit_tab() -> None:
    gr.Markdown("Is a released LoRA adapter protected against merging? hubguard scales its update (W0 + s·ΔW, "
                "what a merge does) and measures how often the scaled model agrees with the update at s = 1. "
                "A protected update (Trap², a scale lock) breaks off s = 1; an unprotected one fades smoothly into "
                "its base.")
    with gr.Row(equal_height=True):
        files = gr.File(label="Adapter files (adapter_config.json + adapter_model.safetensors)", file_count="multiple",
                        type="filepath", elem_id="hg-audit-files", scale=2)
        with gr.Column(scale=2):
            adapter = gr.Textbox(label="…or the adapter's repo", placeholder="hf://ORG/ADAPTER", elem_id="hg-audit-adapter")
            base = gr.Textbox(label="Its base model", placeholder="hf://ORG/BASE", elem_id="hg-audit-base")
            go = gr.Button("Audit protection", variant="primary", elem_id="hg-audit")
    text = gr.Textbox(label="Text to measure on (optional; default: Python's docs). Paragraphs are examples.", lines=3)
    card = gr.HTML(html.placeholder("The verdict appears here.", elem_id="hg-audit-card"), label="Audit card (HTML)")
    plot = gr.Image(label="Scale sweep", type="filepath", interactive=False, elem_id="hg-audit-plot")
    with gr.Accordion("Sweep (JSON)", open=False):
        result = gr.JSON(label="Audit (JSON)")

    def audit_protection(adapter_files: list[str] | None, adapter_repo: str, base_model: str, eval_text: str):
        """Scale sweep of a LoRA adapter on its base, and whether it looks protected against merging."""
        try:
            v = run_audit(adapter_files=adapter_files, adapter_source=adapter_repo, base_source=base_model,
                          eval_text=eval_text)
            return v.result, v.card, v.plot
        except Exception as err:  # noqa: BLE001
            data = failure(err, action="audit_protection")
            return data, error_html(data, elem_id="hg-audit-card"), None

    go.click(audit_protection, [files, adapter, base, text], [result, card, plot], api_name="audit_protection")
