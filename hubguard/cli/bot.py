"""`hubguard bot serve`: host the moderators' webhook bot."""

from __future__ import annotations

from typing import Annotated

import typer

from hubguard.cli.errors import group

app = group(help="The moderators' webhook bot.")


@app.callback()
def _group() -> None:
    """The moderators' webhook bot."""


@app.command("serve")
def serve(
    registry: Annotated[str | None, typer.Option("--registry", help="Registry folder (default: HUBGUARD_REGISTRY or the shipped one).")] = None,
    secret: Annotated[str | None, typer.Option("--secret", envvar="WEBHOOK_SECRET", help="The webhook secret set in the Hub's webhook settings.")] = None,
    journal: Annotated[str | None, typer.Option("--journal", help="SQLite journal of accepted commits (default: HUBGUARD_HOME/bot/journal.sqlite).")] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option("--port", help="Port to listen on (a Space uses 7860).")] = 7860,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Unfinished commits before intake answers 503 + Retry-After.")] = 1000,
    cache_max_bytes: Annotated[str | None, typer.Option("--cache-max-bytes", help="Cap of the range cache, e.g. 2G (default: HUBGUARD_REMOTE_CACHE_MAX_BYTES or 2 GiB).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Registry candidates to verify per commit.")] = 5,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Log verdicts only; post no comment or discussion.")] = False,
    gradio: Annotated[bool, typer.Option("--gradio", help="Host with huggingface_hub.WebhooksServer (a Gradio page), as on a Space.")] = False,
) -> None:
    """Listen for Hub webhooks at /webhooks/lineage, check every new model commit, flag undeclared lineage.

    Every accepted commit is journaled before the Hub gets its answer; a restarted bot resumes what was left.
    Writes to the Hub with HF_TOKEN. Example: WEBHOOK_SECRET=... HF_TOKEN=... hubguard bot serve --port 7860
    """
    from hubguard import constants
    from hubguard.hooks.bot.server import BotSettings, serve_gradio
    from hubguard.hooks.bot.server import serve as serve_bot

    settings = BotSettings(
        journal=journal or str(constants.HUBGUARD_HOME / "bot" / "journal.sqlite"), secret=secret, registry=registry,
        act=not dry_run, top_k=top_k, max_queue=max_queue,
        cache_max_bytes=constants.parse_size(cache_max_bytes, default=-1) if cache_max_bytes else None,
    )
    if settings.cache_max_bytes is not None and settings.cache_max_bytes < 0:
        raise typer.BadParameter(f"--cache-max-bytes {cache_max_bytes!r} is not a size (bytes, or with K/M/G).")
    if gradio:
        serve_gradio(settings, host=host, port=port)
    else:
        serve_bot(settings, host=host, port=port)
