"""`HubStore`: the bytes of a Hugging Face Hub repo, read with HTTP `Range` requests.

The revision is resolved to a commit sha and the files are listed with `huggingface_hub` (`HfApi.model_info` with
file sizes); then only the byte ranges asked for are fetched from `{endpoint}/{repo_id}/resolve/{sha}/{file}` with
huggingface_hub's HTTP session and headers (auth, user agent, offline mode behave like the Hub client). Nearby
ranges are coalesced into one request, independent requests run in parallel, and every complete, verified read
is cached on disk under `(repo_id, sha, file, range)` (`hubguard.weights.remote_cache`), so a second
fingerprint of the same commit issues no range request at all (and none at all when the revision is a sha).

Faults: 5xx, 408 and dropped connections are retried with exponential backoff (bounded tries); 429 waits for
`Retry-After` / `RateLimit` when that is within `max_wait_s`, else fails at once saying when to retry; a response
that ignores `Range` (200 with the whole body, a wrong `Content-Range` or length) is refused from its headers before
its body is read; a short body is retried, never padded; 401/403 say to set `HF_TOKEN`; 404 is
`SourceNotFoundError`. Every failure is a `RemoteError` (or `SourceNotFoundError`) that says what to do.

Settings read when a store is made (so tests and CLIs can set them): `HF_ENDPOINT`, `HF_TOKEN`,
`HUBGUARD_REMOTE_CACHE` (folder, or "off"), `HUBGUARD_REMOTE_RETRIES` (default 5), `HUBGUARD_REMOTE_BACKOFF`
(seconds, default 1), `HUBGUARD_REMOTE_MAX_WAIT` (seconds, default 60), `HUBGUARD_REMOTE_MAX_GAP` (bytes, default
64 KiB).
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import quote, urlsplit

from hubguard import constants
from hubguard.errors import CorruptCheckpointError, RemoteError, SourceNotFoundError
from hubguard.utils import get_logger
from hubguard.weights.remote_cache import RangeCache, default_cache_root
from hubguard.weights.store import MAX_TEXT_BYTES, ReadStats, coalesce_ranges

if TYPE_CHECKING:
    import httpx2

logger = get_logger(__name__)

# Ranges closer than this are fetched in one request. A Hub request costs ~50-100 ms of latency, about what 1-5 MB
# of transfer costs, so fetching a 1 MiB gap is cheaper than a second request. For the embedding rows of a fixed
# token set in a 32k vocabulary this turns ~150 row requests into ~8 (`benchmarks/remote.py`, request_pattern).
REMOTE_MAX_GAP = 64 << 10  # the reading plan opens wider windows itself when a budget makes that worthwhile
# The first read of a .safetensors file at offset 0 fetches this much, so the 8-byte length and the JSON header
# usually arrive in one request.
HEADER_PREFETCH = 256 * 1024
_MEMO_SPAN_LIMIT = 1 << 20
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_TOKEN_HINT = (
    "Set HF_TOKEN (or pass token=...) to a token that can read the repo; for a gated repo, also accept its "
    "conditions on the repo page first."
)


@dataclass
class RemoteReadStats(ReadStats):
    """ReadStats plus what only a remote store has. `requests` counts every HTTP request (API calls, redirects and
    retries included); `bytes_read` counts body bytes received."""

    api_requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    cached_bytes: int = 0


class _Retry(Exception):
    """A transient failure: wait `wait_s` (None: exponential backoff) and try again."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


class HubStore:
    """A Hub repo at one commit, as a `ByteStore`.

    Args:
        repo_id: "org/name".
        revision: branch, tag or commit sha (default: the repo's default branch).
        token: Hub token; default `HF_TOKEN` or the token saved by `hf auth login`.
        endpoint: Hub URL; default `HF_ENDPOINT` (read now) or https://huggingface.co.
        cache_dir: range cache root; default `HUBGUARD_REMOTE_CACHE` or `HUBGUARD_CACHE/remote`. `use_cache=False`
            disables it.
        max_retries: tries per request for transient faults.
        backoff_s: first backoff wait (doubles each try).
        max_wait_s: longest single wait (a 429 asking for longer fails at once).
        max_gap: ranges closer than this many bytes share a request (default `HUBGUARD_REMOTE_MAX_GAP` or 64 KiB).
        max_workers: parallel range requests.
    """

    def __init__(
        self,
        *,
        repo_id: str,
        revision: str | None = None,
        token: str | None = None,
        endpoint: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        max_wait_s: float | None = None,
        timeout_s: float = 60.0,
        max_gap: int | None = None,
        max_workers: int = 8,
    ) -> None:
        from huggingface_hub import get_token

        self.repo_id = repo_id
        self.revision = revision
        self.endpoint = (endpoint or constants.hf_endpoint()).rstrip("/")
        self._token = token or get_token()
        self.max_retries = max(1, int(max_retries)) if max_retries is not None else constants.remote_retries()
        self.backoff_s = backoff_s if backoff_s is not None else constants.remote_backoff_s()
        self.max_wait_s = max_wait_s if max_wait_s is not None else constants.remote_max_wait_s()
        self.timeout_s = timeout_s
        self.max_gap = int(max_gap) if max_gap is not None else constants.remote_max_gap(REMOTE_MAX_GAP)
        self.max_workers = max(1, max_workers)
        self.stats = RemoteReadStats()
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, int], bytes] = {}
        self._direct_urls: dict[str, str] = {}
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
        self._cache_root = root if use_cache else None
        self.sha, self._files = self._resolve()
        self._cache = RangeCache(root=self._cache_root, repo_id=repo_id, sha=self.sha) if self._cache_root else None
        if self._cache is not None and not self._from_cached_listing:
            self._cache.save_listing(self._files)
        self.name = f"hf://{repo_id}@{self.sha}"

    def __repr__(self) -> str:
        return f"HubStore({self.name!r}, endpoint={self.endpoint!r})"

    # -- listing -------------------------------------------------------------------------------------

    def _resolve(self) -> tuple[str, dict[str, int | None]]:
        """(commit sha, {file: size}) for the revision; a pinned sha with a cached listing needs no request."""
        self._from_cached_listing = False
        if self._cache_root is not None and self.revision and _SHA_RE.match(self.revision):
            listing = RangeCache(root=self._cache_root, repo_id=self.repo_id, sha=self.revision).load_listing()
            if listing is not None:
                self._from_cached_listing = True
                return self.revision, listing
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self._token or False, library_name="hubguard")
        what = f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision else "")
        info = self._with_retries(
            lambda: api.model_info(self.repo_id, revision=self.revision, files_metadata=True, timeout=self.timeout_s),
            what=f"listing {what}",
            api=True,
        )
        if not info.sha:
            raise RemoteError(f"{self.endpoint} did not return a commit sha for {what}. Is HF_ENDPOINT a Hub server?")
        files = {s.rfilename: (s.lfs.size if s.lfs is not None else s.size) for s in (info.siblings or [])}
        return info.sha, files

    def list_files(self) -> list[str]:
        return sorted(self._files)

    def size(self, file: str) -> int:
        if file not in self._files:
            raise SourceNotFoundError(
                f"'{file}' is not in {self.name}. The repo is incomplete at this revision, or pin another one with "
                "hf://ORG/NAME@REVISION."
            )
        size = self._files[file]
        if size is None:
            from huggingface_hub import get_hf_file_metadata

            meta = self._with_retries(
                lambda: get_hf_file_metadata(self._resolve_url(file), token=self._token or False, timeout=self.timeout_s),
                what=f"the size of {self.name}/{file}",
                api=True,
            )
            if meta.size is None:
                raise RemoteError(f"{self.endpoint} gave no size for {self.name}/{file}. Is HF_ENDPOINT a Hub server?")
            size = self._files[file] = int(meta.size)
        return size

    # -- reads ---------------------------------------------------------------------------------------

    def read_text(self, file: str) -> str | None:
        if file not in self._files:
            return None
        size = self.size(file)
        if size > MAX_TEXT_BYTES:
            raise RemoteError(
                f"{self.name}/{file} is {size} bytes, too large to read as a text file (limit {MAX_TEXT_BYTES})."
            )
        data = self.read_ranges(file, [(0, size)])[0] if size else b""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorruptCheckpointError(f"'{self.name}/{file}' is not UTF-8 text ({err}). Fix the file in the repo.") from err

    def read_ranges(self, file: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        size = self.size(file)
        for start, stop in ranges:
            if start < 0 or stop < start or stop > size:
                raise CorruptCheckpointError(
                    f"'{self.name}/{file}' is {size} bytes but bytes [{start}, {stop}) were asked for: its header lies "
                    "about tensor offsets or the file is truncated. The repo's file is broken; re-upload it."
                )
        out: list[bytes | None] = [None] * len(ranges)
        missing: list[tuple[int, int]] = []
        for i, (start, stop) in enumerate(ranges):
            data = b"" if start == stop else self._lookup(file, start, stop)
            if data is None:
                missing.append((start, stop))
            else:
                out[i] = data
                if start != stop:
                    with self._lock:
                        self.stats.cache_hits += 1
                        self.stats.cached_bytes += stop - start
        if missing:
            spans = coalesce_ranges(missing, max_gap=self.max_gap)
            if file.endswith(".safetensors") and spans[0][0] == 0 and spans[0][1] < HEADER_PREFETCH:
                spans = coalesce_ranges([(0, min(size, HEADER_PREFETCH)), *spans], max_gap=self.max_gap)
            fetched = self._fetch_all(file, spans, size)
            for i, (start, stop) in enumerate(ranges):
                if out[i] is None:
                    for (s, e), buf in zip(spans, fetched, strict=True):
                        if s <= start and stop <= e:
                            out[i] = buf[start - s : stop - s]
                            break
        assert all(b is not None for b in out)
        return out  # type: ignore[return-value]

    def _lookup(self, file: str, start: int, stop: int) -> bytes | None:
        with self._lock:
            for (f, s), buf in self._memo.items():
                if f == file and s <= start and stop <= s + len(buf):
                    return buf[start - s : stop - s]
        if self._cache is not None:
            with self._lock:
                return self._cache.lookup(file, start, stop)
        return None

    def _fetch_all(self, file: str, spans: list[tuple[int, int]], size: int) -> list[bytes]:
        if len(spans) == 1 or self.max_workers == 1:
            return [self._fetch(file, s, e, size) for s, e in spans]
        first: list[bytes] = []
        if file not in self._direct_urls:
            # The first request learns the file's CDN URL from the Hub's redirect; in parallel, every request would be
            # redirected (a resolve request each, counted by the Hub's rate limiter).
            first, spans = [self._fetch(file, *spans[0], size)], spans[1:]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(spans)), thread_name_prefix="hubstore") as pool:
            return first + list(pool.map(lambda se: self._fetch(file, se[0], se[1], size), spans))

    def _fetch(self, file: str, start: int, stop: int, size: int) -> bytes:
        data = self._with_retries(lambda: self._get_range(file, start, stop, size), what=f"bytes {start}-{stop} of {file}")
        with self._lock:
            self.stats.add(file=file, nbytes=len(data), requests=0)
            if len(data) <= _MEMO_SPAN_LIMIT and len(self._memo) < 64:
                self._memo[(file, start)] = data
            if self._cache is not None:
                self._cache.store(file, start, data)
        return data

    # -- HTTP ----------------------------------------------------------------------------------------

    def _resolve_url(self, file: str) -> str:
        return f"{self.endpoint}/{self.repo_id}/resolve/{self.sha}/{quote(file)}"

    def _headers(self, url: str) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        same_host = urlsplit(url).netloc == urlsplit(self.endpoint).netloc
        headers = build_hf_headers(token=(self._token or False) if same_host else False, library_name="hubguard")
        headers["Accept-Encoding"] = "identity"  # byte ranges of the stored file, never of a compressed encoding
        return headers

    def _get_range(self, file: str, start: int, stop: int, size: int) -> bytes:
        import httpx2
        from huggingface_hub.utils import get_session

        direct = self._direct_urls.get(file)
        url = direct or self._resolve_url(file)
        headers = self._headers(url)
        headers["Range"] = f"bytes={start}-{stop - 1}"
        where = f"{self.name}/{file}"
        expected = stop - start
        with get_session().stream("GET", url, headers=headers, timeout=self.timeout_s, follow_redirects=True) as resp:
            with self._lock:
                self.stats.requests += 1 + len(resp.history)
            status = resp.status_code
            if direct is not None and status in (401, 403, 404, 410):
                # A remembered CDN URL expired: go through the resolve URL again (not a failed try).
                self._direct_urls.pop(file, None)
                raise _Retry(f"the CDN URL of {file} expired", wait_s=0)
            if status not in (200, 206):
                self._raise_for_status(resp, what=f"{where} bytes {start}-{stop}")
            self._check_range_headers(resp, where=where, start=start, stop=stop, size=size)
            buf = bytearray()
            try:
                for chunk in resp.iter_bytes(1 << 20):
                    buf += chunk
                    if len(buf) > expected:
                        raise RemoteError(
                            f"{resp.url} sent more than the {expected} bytes asked for. The server or a proxy is "
                            "rewriting responses; check HF_ENDPOINT and proxy settings."
                        )
            except (httpx2.TransportError, httpx2.StreamError) as err:
                raise _Retry(f"the connection broke after {len(buf)} of {expected} bytes ({err})") from err
            if len(buf) != expected:
                raise _Retry(f"the server sent {len(buf)} of {expected} bytes")
            if str(resp.url) != url and len(resp.history) > 0:
                self._direct_urls[file] = str(resp.url)
            return bytes(buf)

    def _check_range_headers(self, resp: "httpx2.Response", *, where: str, start: int, stop: int, size: int) -> None:
        """Refuse, from the headers alone, a response that is not exactly `[start, stop)` (the body is not read)."""
        expected = stop - start
        length = resp.headers.get("Content-Length")
        if resp.status_code == 200:
            if start == 0 and stop == size and (length is None or int(length) == size):
                return
            raise RemoteError(
                f"{resp.url} ignored the Range header and started sending the whole {length or size}-byte file for "
                f"{where}, when only {expected} bytes were asked for; the download was aborted. HF_ENDPOINT "
                f"({self.endpoint}) or a proxy in between does not support HTTP Range: point HF_ENDPOINT at the Hub "
                "or a Range-capable mirror, or download the repo and fingerprint the local folder."
            )
        m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
        if (
            m is None
            or int(m.group(1)) != start
            or int(m.group(2)) != stop - 1
            or (m.group(3) != "*" and int(m.group(3)) != size)
            or (length is not None and int(length) != expected)
        ):
            raise RemoteError(
                f"{resp.url} answered bytes {start}-{stop - 1} of {where} (a {size}-byte file) with Content-Range "
                f"'{resp.headers.get('Content-Range')}' and Content-Length {length}. The file changed under a pinned "
                "commit, or the server or a proxy mangles Range requests; check HF_ENDPOINT and proxies, then retry."
            )

    def _raise_for_status(self, resp: "httpx2.Response", *, what: str) -> NoReturn:
        status = resp.status_code
        if status == 429:
            wait = _retry_after(resp.headers)
            if wait is not None and wait > self.max_wait_s:
                raise RemoteError(
                    f"The Hub rate-limited hubguard while reading {what}: it asks to wait {wait:.0f} s, more than the "
                    f"{self.max_wait_s:.0f} s allowed (HUBGUARD_REMOTE_MAX_WAIT). Retry later, or set HF_TOKEN: "
                    "authenticated requests get higher limits."
                )
            raise _Retry("rate limited (429)", wait_s=wait)
        if status >= 500 or status == 408:
            raise _Retry(f"the server answered {status}")
        message = resp.headers.get("X-Error-Message") or ""
        if status in (401, 403):
            has = "the token you gave was refused" if self._token else "no token was sent"
            raise RemoteError(
                f"Access to {what} was denied ({status}{': ' + message if message else ''}); {has}. {_TOKEN_HINT}"
            )
        if status == 404:
            raise SourceNotFoundError(
                f"{what} was not found ({message or '404'}). Check the repo id, revision and file name; if the repo is "
                f"private, {_TOKEN_HINT}"
            )
        if status == 416:
            raise RemoteError(
                f"The server says {what} is out of range (416): the file is shorter than its listed size. The repo "
                "listing and the file disagree; retry later or re-upload the file."
            )
        raise RemoteError(f"Reading {what} failed with HTTP {status} {message}. Retry later; if it persists, report it.")

    def _with_retries(self, call, *, what: str, api: bool = False):  # noqa: ANN001, ANN202 - generic helper
        """Run `call`, retrying transient faults (5xx, 408, 429 within max_wait_s, dropped connections)."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        last = ""
        attempt = 0
        refreshes = 0
        while True:
            try:
                if api:
                    with self._lock:
                        self.stats.api_requests += 1
                        self.stats.requests += 1
                    try:
                        return call()
                    except HfHubHTTPError as err:
                        if err.response is None:
                            raise RemoteError(f"{what} failed: {err}") from err
                        self._raise_for_status(err.response, what=what)
                return call()
            except _Retry as err:
                if err.wait_s == 0 and refreshes < 2:  # an expired CDN URL, not a failure: retry now, uncounted
                    refreshes += 1
                    continue
                last = err.reason
                wait = err.wait_s
            except (httpx2.TransportError, httpx2.StreamError) as err:
                last = f"{type(err).__name__}: {err}"
                wait = None
            except OfflineModeIsEnabled as err:
                raise RemoteError(
                    f"Cannot read {what}: HF_HUB_OFFLINE is set. Unset it, or fingerprint a local folder instead."
                ) from err
            attempt += 1
            if attempt >= self.max_retries:
                break
            if wait is None:
                wait = self.backoff_s * (2 ** (attempt - 1))
            wait = min(max(wait, 0.0), self.max_wait_s)
            with self._lock:
                self.stats.retries += 1
            logger.info("Retrying %s in %.1f s (try %d of %d): %s", what, wait, attempt + 1, self.max_retries, last)
            time.sleep(wait)
        raise RemoteError(
            f"Reading {what} from {self.endpoint} failed {self.max_retries} times; last error: {last}. The Hub or the "
            "network is having trouble: retry later (HUBGUARD_REMOTE_RETRIES sets the number of tries)."
        )


def _retry_after(headers: "httpx2.Headers") -> float | None:
    """Seconds a 429 asks to wait: `Retry-After` (seconds), else the `RateLimit` header's reset when exhausted."""
    from huggingface_hub.utils import parse_ratelimit_headers

    value = headers.get("Retry-After")
    if value is not None and value.strip().isdigit():
        return float(value.strip())
    info = parse_ratelimit_headers(headers)
    if info is not None and info.remaining == 0:
        return float(info.reset_in_seconds)
    return None
