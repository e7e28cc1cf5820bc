"""The moderators' webhook bot: fingerprint every new model commit on the Hub and flag undeclared lineage.

    payload      the secret check, the bounded parser, the commits an event names
    journal      the SQLite (WAL) journal every accepted commit is written to before the 2xx; group commit
    worker       claim -> check -> verdict rows -> post -> done; a thread or its own process
    discussions  one discussion per repo, found or created by a hidden signed marker
    report       the verdict-log rows and the Markdown of one check
    server       the FastAPI endpoint, uvicorn, the worker process; a WebhooksServer variant for Spaces
    inprocess    LineageBot: intake and worker in one process
"""

from hubguard.hooks.bot.inprocess import LineageBot
from hubguard.hooks.bot.payload import Target, WebhookEvent, parse_payload, targets_of, verify_secret
from hubguard.hooks.bot.server import WEBHOOK_PATH, BotSettings, build_app, serve, serve_gradio

__all__ = ["WEBHOOK_PATH", "BotSettings", "LineageBot", "Target", "WebhookEvent", "build_app", "parse_payload", "serve",
           "serve_gradio", "targets_of", "verify_secret"]
