"""What the bot's tests and benchmarks share: Hub-shaped webhook payloads, fine-tuned copies of a model, and the
real `hubguard bot serve` process (started in its own session so it and its worker can be ended by process group)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.hubserver import HubServer

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-webhook"
WEBHOOK_PATH = "/webhooks/lineage"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finetune(src: Path, dst: Path, *, card: str | None = None, noise: float = 0.2, seed: int = 0) -> Path:
    """A copy whose matrices moved by `noise` of their scale (a fine-tune), with an optional model card header."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    st = dst / "model.safetensors"
    tensors = load_file(str(st))
    g = torch.Generator().manual_seed(seed)
    for k, t in tensors.items():
        if t.dim() == 2:
            tensors[k] = t + noise * t.std() * torch.randn(t.shape, generator=g)
    save_file(tensors, str(st))
    if card is not None:
        (dst / "README.md").write_text(f"---\n{card}\n---\n\n# A model\n")
    return dst


def payload(repo: str, sha: str | None, *, repo_type: str = "model", scope: str = "repo.content", action: str = "update",
            ref: str = "refs/heads/main", discussion: dict | None = None) -> dict:
    """A payload shaped like the Hub's (webhook version 3)."""
    body = {
        "event": {"action": action, "scope": scope},
        "repo": {"type": repo_type, "name": repo, "id": "6399f58518721fdd27fc9ca9", "private": False, "headSha": sha,
                 "owner": {"id": "628b753283ef59b5be89e937"},
                 "url": {"web": f"https://huggingface.co/{repo}", "api": f"https://huggingface.co/api/models/{repo}"}},
        "webhook": {"id": "6390e855e30d9209411de93b", "version": 3},
    }
    if scope == "repo.content" and sha:
        body["updatedRefs"] = [{"ref": ref, "oldSha": None, "newSha": sha}]
    if discussion is not None:
        body["discussion"] = discussion
    return body


def child_env(hub: HubServer, workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a hubguard child process that talks to `hub` (HF_HUB_OFFLINE off, private caches)."""
    return {**os.environ, "WEBHOOK_SECRET": SECRET, "HF_TOKEN": HubServer.TOKEN, "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_OFFLINE": "0", "HUBGUARD_REMOTE_CACHE": str(workdir / "range-cache"),
            "HUBGUARD_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_EXPERIMENTAL_WARNING": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p), **extra}


class BotProcess:
    """`python -m hubguard.cli bot serve` against `hub`, waited for until it answers /healthz."""

    def __init__(self, *, registry: Path, journal: Path, hub: HubServer, workdir: Path, args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"
        self.log = (workdir / f"bot-{self.port}.log").open("w")
        cmd = [sys.executable, "-m", "hubguard.cli", "bot", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--journal", str(journal), "--registry", str(registry), *args]
        self.proc = subprocess.Popen(cmd, env=child_env(hub, workdir), cwd=workdir, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, f"the bot exited: {self.output()}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the bot did not start: {self.output()}"
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def post(self, body: object, *, secret: str | None = SECRET, raw: bytes | None = None,
             client: httpx.Client | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json", **({"X-Webhook-Secret": secret} if secret is not None else {})}
        content = raw if raw is not None else json.dumps(body).encode()
        return (client or httpx).post(self.url, content=content, headers=headers, timeout=60)

    def worker_pids(self) -> list[int]:
        import psutil

        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()


def wait_until(predicate, *, timeout: float, what: str, poll_s: float = 0.2) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll_s)
