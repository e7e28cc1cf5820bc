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
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option("--port", help="Port to listen on (a Space uses 7860).")] = 7860,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Log verdicts only; post no comment or discussion.")] = False,
) -> None:
    """Listen for Hub webhooks at /webhooks/lineage, check every new model commit, flag undeclared lineage.

    Writes to the Hub with HF_TOKEN. Example: WEBHOOK_SECRET=... HF_TOKEN=... hubguard bot serve --port 7860
    """
    from hubguard.hooks.webhook import serve as serve_bot

    serve_bot(registry=registry, secret=secret, host=host, port=port, act=not dry_run)
