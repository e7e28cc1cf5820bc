"""The bot's HTTP side: `POST /webhooks/lineage`, answered from the journal in milliseconds.

For each request, in this order: the secret (the `X-Webhook-Secret` header only, constant-time compare: 401
missing, 403 wrong) — before a byte of the body is read; the size (`Content-Length` or the bytes read so far over
1 MB: 413); the payload (malformed or nested too deep: 400); events that carry no new model commit are answered 200
"ignored"; the rest are journaled — durably, before the answer — and answered 202 (200 "duplicate" for a
redelivery). A journal holding `max_queue` unfinished commits answers 503 with `Retry-After`.

`serve` runs the app with uvicorn and the worker as a child process (`WorkerProcess`): SIGTERM stops intake,
lets the worker finish its step (or kills it after a grace period) and exits; whatever was accepted stays in the
journal and the next start resumes it. `serve_gradio` hosts the same endpoint in `huggingface_hub.WebhooksServer`
(a Gradio landing page, for a Space).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from hubguard.errors import HookError
from hubguard.hooks.bot.journal import Intake, Journal, QueueFull
from hubguard.hooks.bot.payload import MAX_BODY_BYTES, parse_payload, targets_of, verify_secret
from hubguard.utils import get_logger

logger = get_logger(__name__)

WEBHOOK_PATH = "/webhooks/lineage"
RETRY_AFTER_S = 30


@dataclass(frozen=True)
class BotSettings:
    journal: str
    secret: str | None
    registry: str | None = None
    endpoint: str | None = None
    act: bool = True
    top_k: int = 5
    max_queue: int = 1000
    cache_max_bytes: int | None = None
    grace_s: float = 10.0
    retry_base_s: float = 5.0


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers=headers)


async def _read_body(request: Any) -> bytes | None:
    """The body, or None as soon as it is over MAX_BODY_BYTES (the rest is never read)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def make_handler(*, intake: Intake, secret: str | None):  # noqa: ANN201 - an async FastAPI endpoint
    """The POST endpoint (shared by `build_app` and `serve_gradio`)."""
    import asyncio

    from fastapi import Request

    async def lineage_webhook(request: Request):  # noqa: ANN202
        refused = verify_secret(expected=secret, given=request.headers.get("x-webhook-secret"))
        if refused == 401:
            return _json({"error": "X-Webhook-Secret header not set. Configure the webhook's secret."}, 401)
        if refused == 403:
            return _json({"error": "Invalid webhook secret."}, 403)
        length = request.headers.get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > MAX_BODY_BYTES):
            if not length.strip().isdigit():
                return _json({"error": "Content-Length is not a number."}, 400)
            return _json({"error": f"The body is {int(length):,} bytes; a webhook payload is at most {MAX_BODY_BYTES:,}."}, 413)
        body = await _read_body(request)
        if body is None:
            return _json({"error": f"The body is over {MAX_BODY_BYTES:,} bytes; a webhook payload is smaller."}, 413)
        try:
            event = parse_payload(body)
        except HookError as err:
            return _json({"error": str(err)}, 400)
        targets, why = targets_of(event)
        if why is not None:
            return _json({"status": "ignored", "reason": why}, 200)
        summary = {"repo_id": event.repo_id, "scope": event.scope, "action": event.action}
        try:
            queued, duplicate = await asyncio.wrap_future(intake.submit(targets, summary))
        except QueueFull as err:
            return _json({"error": f"{err} {err.fix}", "retry_after": RETRY_AFTER_S}, 503,
                         {"Retry-After": str(RETRY_AFTER_S)})
        status = "queued" if queued else "duplicate"
        return _json({"status": status, "queued": queued, "duplicate": duplicate}, 202 if queued else 200)

    lineage_webhook.__annotations__ = {"request": Request}  # FastAPI reads the annotation; this module uses PEP 563
    return lineage_webhook


def build_app(*, intake: Intake, secret: str | None, lifespan: Any = None) -> Any:
    """A FastAPI app: the webhook, `GET /` (what is queued) and `GET /healthz`."""
    from fastapi import FastAPI

    app = FastAPI(title="hubguard lineage bot", lifespan=lifespan)
    app.post(WEBHOOK_PATH)(make_handler(intake=intake, secret=secret))

    @app.get("/")
    def status() -> dict[str, Any]:
        return {"service": "hubguard lineage bot", "webhook": WEBHOOK_PATH, "tasks": intake.journal.counts()}

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


class WorkerProcess:
    """The worker as a child process: started, restarted if it dies, stopped with SIGTERM (SIGKILL after a grace)."""

    def __init__(self, settings: BotSettings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hubguard-bot-worker-watch", daemon=True)

    def _command(self) -> list[str]:
        import os

        s = self.settings
        cmd = [sys.executable, "-m", "hubguard.hooks.bot.worker", "--journal", s.journal, "--top-k", str(s.top_k),
               "--parent-pid", str(os.getpid()), "--retry-base-s", str(s.retry_base_s)]
        cmd += ["--registry", s.registry] if s.registry else []
        cmd += ["--endpoint", s.endpoint] if s.endpoint else []
        cmd += ["--cache-max-bytes", str(s.cache_max_bytes)] if s.cache_max_bytes is not None else []
        return cmd + (["--dry-run"] if not s.act else [])

    def _spawn(self) -> None:
        # spawned by the watch thread, which lives as long as the bot: PR_SET_PDEATHSIG follows the spawning thread
        self.proc = subprocess.Popen(self._command(), stdin=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write((self.settings.secret or "") + "\n")
        self.proc.stdin.close()

    def _watch(self) -> None:
        self._spawn()
        while not self._stopping.wait(0.5):
            assert self.proc is not None
            if self.proc.poll() is not None:
                logger.warning("bot worker exited with %s; restarting it", self.proc.returncode)
                self.restarts += 1
                time.sleep(min(30.0, 0.5 * 2 ** min(self.restarts, 6)))
                if not self._stopping.is_set():
                    self._spawn()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.settings.grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # mid-check: the journal keeps the task as `checking`, the next worker re-queues it
                self.proc.wait()


def _check_settings(settings: BotSettings) -> None:
    if settings.secret is None:
        raise HookError("The webhook bot needs a secret: set WEBHOOK_SECRET (or --secret) to the secret configured in the "
                        "Hub's webhook settings, so that nobody else can make it post.")


def serve(settings: BotSettings, *, host: str = "0.0.0.0", port: int = 7860) -> None:  # noqa: S104 - a Space listens on all
    """Run the bot until SIGTERM/SIGINT: uvicorn for the intake, a child process for the worker."""
    import uvicorn

    _check_settings(settings)
    journal = Journal(settings.journal)
    intake = Intake(journal, max_open=settings.max_queue)
    worker = WorkerProcess(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        worker.start()
        logger.info("hubguard bot: listening on %s:%d%s, journal %s", host, port, WEBHOOK_PATH, settings.journal)
        try:
            yield
        finally:
            worker.stop()
            intake.close()
            journal.close()

    app = build_app(intake=intake, secret=settings.secret, lifespan=lifespan)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(settings.grace_s))


def serve_gradio(settings: BotSettings, *, host: str = "0.0.0.0", port: int = 7860,  # noqa: S104
                 prevent_thread_lock: bool = False) -> Any:
    """Host the endpoint with `huggingface_hub.WebhooksServer` (a Gradio page + `POST /webhooks/lineage`) and the
    worker as a child process. Blocks unless `prevent_thread_lock`; then returns an object with `.url`, `.close()`."""
    try:
        import gradio as gr
        from huggingface_hub import WebhooksServer
    except ImportError as err:
        from hubguard.errors import MissingDependencyError

        raise MissingDependencyError.for_extra(package=err.name or "gradio", extra="space", purpose="The webhook bot") from None
    _check_settings(settings)
    journal = Journal(settings.journal)
    intake = Intake(journal, max_open=settings.max_queue)
    worker = WorkerProcess(settings)
    with gr.Blocks(title="hubguard lineage bot") as ui:
        gr.Markdown(f"## hubguard lineage bot\nPOST Hub webhooks (scopes `repo`, `repo.content`, `discussion`) to "
                    f"`{WEBHOOK_PATH}` with the configured secret.")
    server = WebhooksServer(ui=ui, webhook_secret=settings.secret)
    server.webhook_secret = None  # our handler checks it itself (header only, constant time)
    server.add_webhook(WEBHOOK_PATH.removeprefix("/webhooks/"))(make_handler(intake=intake, secret=settings.secret))
    worker.start()

    def close() -> None:
        worker.stop()
        ui.close()
        intake.close()
        journal.close()

    try:
        server.launch(prevent_thread_lock=prevent_thread_lock, server_name=host, server_port=port, share=False)
    except BaseException:
        close()
        raise
    if not prevent_thread_lock:
        close()
        return None
    return _Served(url=(ui.local_url or f"http://{host}:{port}/").rstrip("/") + WEBHOOK_PATH, close=close)


@dataclass(frozen=True)
class _Served:
    url: str
    close: Any
