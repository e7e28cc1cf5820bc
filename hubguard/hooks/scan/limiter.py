"""A per-token rate limiter for the Hub, shared by every worker of a scan.

The Hub counts requests per token (per IP when anonymous) in fixed 5-minute windows, in buckets: "api"
(`/api/...`), "resolvers" (`/resolve/...`) and pages (https://huggingface.co/docs/hub/rate-limits). `PLANS` holds
the published budgets; a scan uses `share` of them (default 0.9, leaving room for the user's other tools). Each
bucket is a token bucket refilled at budget/300 per second with a small burst, so no 5-minute window can hold more
than the budget. Requests to other hosts (the CDN that serves LFS / Xet bytes after a redirect) are not counted.

`limited_session(acquire)` makes huggingface_hub's shared HTTP client call `acquire(bucket)` before every request
(so `HfApi` calls and HubStore's Range reads alike) and `pause(seconds)` when the Hub answers 429 or says a window is
spent (`RateLimit` header). On Ray, the limiter is one named actor per token (`hubguard.hooks.scan.engines`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

WINDOW_S = 300.0
# Requests per 5-minute window and token (anonymous: per IP), https://huggingface.co/docs/hub/rate-limits.
PLANS: dict[str, dict[str, int]] = {
    "anonymous": {"api": 500, "resolvers": 3000},
    "free": {"api": 1000, "resolvers": 5000},
    "pro": {"api": 2500, "resolvers": 12000},
}
BURST = 10


def bucket_of(url: str, *, endpoint: str) -> str | None:
    """Which Hub bucket a request URL counts against (None: not a Hub request, e.g. the CDN)."""
    parts, hub = urlsplit(url), urlsplit(endpoint)
    if (parts.hostname, parts.port) != (hub.hostname, hub.port):
        return None
    if "/resolve/" in parts.path:
        return "resolvers"
    return "api" if parts.path.startswith("/api/") else "pages"


@dataclass
class _Bucket:
    rate: float  # tokens per second
    capacity: float
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets sized from a plan's 5-minute budgets. Thread-safe; `acquire` blocks until a token is free."""

    def __init__(self, *, plan: str = "free", share: float = 0.9, budgets: dict[str, int] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        limits = budgets or PLANS[plan]
        self.budgets = {k: max(1, int(v * share)) for k, v in limits.items()}
        now = clock()
        self._buckets = {k: _Bucket(rate=max(v - BURST, 1) / WINDOW_S, capacity=float(min(BURST, v)),
                                    tokens=float(min(BURST, v)), stamp=now) for k, v in self.budgets.items()}
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self.granted: dict[str, int] = dict.fromkeys(self.budgets, 0)
        self.waited_s = 0.0

    def _wait_s(self, bucket: str) -> float:
        """Seconds until a token of `bucket` is free (0: taken now). Caller holds the lock."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        b = self._buckets.get(bucket)
        if b is None:
            return 0.0
        b.tokens = min(b.capacity, b.tokens + (now - b.stamp) * b.rate)
        b.stamp = now
        if b.tokens >= 1 - 1e-9:  # (float rounding must not leave a caller a hair short forever)
            b.tokens = max(0.0, b.tokens - 1)
            return 0.0
        return max((1 - b.tokens) / b.rate, 1e-3)

    def acquire(self, bucket: str) -> float:
        """Take one token of `bucket` (waiting if needed); returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                wait = self._wait_s(bucket)
                if wait == 0.0:
                    self.granted[bucket] = self.granted.get(bucket, 0) + 1
                    self.waited_s += waited
                    return waited
            self._sleep(min(wait, 5.0))
            waited += min(wait, 5.0)

    def try_acquire(self, bucket: str) -> float:
        """Take a token if one is free now (returns 0), else the seconds to wait (nothing taken)."""
        with self._lock:
            wait = self._wait_s(bucket)
            if wait == 0.0:
                self.granted[bucket] = self.granted.get(bucket, 0) + 1
            return wait

    def pause(self, seconds: float) -> None:
        """Stop granting anything for `seconds` (the Hub said the window is spent)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"budgets_per_5min": dict(self.budgets), "granted": dict(self.granted), "waited_s": round(self.waited_s, 3)}


def token_id(token: str | None) -> str:
    """A name for the token's budget that does not reveal the token."""
    return hashlib.sha256((token or "anonymous").encode()).hexdigest()[:16]


@contextmanager
def limited_session(*, acquire: Callable[[str], Any], pause: Callable[[float], Any], endpoint: str) -> Iterator[None]:
    """Route huggingface_hub's shared HTTP client through the limiter for the duration of the block."""
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import parse_ratelimit_headers
    from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

    def on_request(request: httpx2.Request) -> None:
        bucket = bucket_of(str(request.url), endpoint=endpoint)
        if bucket is not None:
            acquire(bucket)

    def on_response(response: httpx2.Response) -> None:
        if bucket_of(str(response.request.url), endpoint=endpoint) is None:
            return
        info = parse_ratelimit_headers(response.headers)
        if response.status_code == 429 or (info is not None and info.remaining == 0):
            retry = response.headers.get("Retry-After")
            seconds = float(retry) if retry and retry.strip().isdigit() else (info.reset_in_seconds if info else 60)
            pause(float(seconds))

    def factory() -> httpx2.Client:
        return httpx2.Client(event_hooks={"request": [hf_request_event_hook, on_request], "response": [on_response]},
                             follow_redirects=True, timeout=None)

    set_client_factory(factory)
    try:
        yield
    finally:
        set_client_factory(default_client_factory)
