"""A real, threaded HTTP server with the Hugging Face Hub's URL layout, for tests and benchmarks.

It serves a folder tree of repos (`root/{type}s/{org}/{name}/`) on 127.0.0.1 with:

- `GET/HEAD /{org}/{name}/resolve/{rev}/{file}` (and `/datasets/...`) with real `Range` support (206 and
  `Content-Range`), the headers `huggingface_hub` reads (`X-Repo-Commit`, `ETag`, `X-Linked-Size`, ...), and,
  like the Hub, a 302 redirect of LFS-like files (`*.safetensors`) to a CDN-style URL on the same server;
- `GET /api/agent-harnesses` (huggingface_hub's agent-detection registry, fetched once a day);
- `GET /api/{type}s/{org}/{name}[/revision/{rev}]` (`HfApi.model_info` / `dataset_info` / `repo_info`) with file
  sizes (`blobs=true`), and `GET /api/{type}s/{org}/{name}/tree/{rev}[/{path}]` (`list_repo_tree`,
  `snapshot_download`);
- uploads: `POST /api/repos/create`, `.../preupload/{rev}` and `.../commit/{rev}` (`HfApi.create_repo`,
  `upload_folder`; small files inline, no LFS), in tests/hubserver_writes.py; `GET /api/models?sort=createdAt`
  (`HfApi.list_models`, newest first, one page), there too;
- gated repos (files need `Authorization: Bearer <HubServer.TOKEN>`, metadata is public) and private repos
  (everything needs the token, like the Hub answers 401 otherwise);
- fault injection (`HubServer.inject`): 5xx n times, connection reset, 429 with `Retry-After` or `RateLimit`
  headers, a 200 that ignores `Range`, a short body, a wrong `Content-Range`.

Every request is logged (`HubServer.log`) and counted the way the Hub's rate limiter counts them (`HubServer.served()`:
every HEAD, API call, redirect and GET, whatever the client believes it sent), so tests and benchmarks/remote.py report
what the server saw.

Use it in a test module (or `tests/conftest.py`) with::

    from tests.support.hubserver import hub_server  # noqa: F401  (pytest fixture)

    def test_x(hub_server):
        sha = hub_server.add_repo("org/name", folder)
        ...  # HF_ENDPOINT points at the server; huggingface_hub's import-time constants are patched too
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from tests.support.hubserver_writes import ListRoute, WriteRoutes

REPO_FILE = "repo.json"
_REQUEST_FAULTS = {"status", "reset", "rate_limit"}  # apply to any matching request, before routing
_CONTENT_FAULTS = {"ignore_range", "short_body", "bad_content_range"}  # apply where file bytes are sent
SCHEMA_VERSION = 1
_CHUNK = 1 << 20


@dataclass
class Fault:
    """One injected fault: applies to the next `times` requests whose path contains `match` (and method)."""

    kind: str  # "status" | "reset" | "rate_limit" | "ignore_range" | "short_body" | "bad_content_range"
    times: int = 1
    match: str = ""
    method: str = "GET"
    status: int = 503
    retry_after: int | None = None
    ratelimit_reset: int | None = None


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    status: int
    authorized: bool
    bytes_sent: int = 0
    aborted: bool = False


@dataclass
class _RepoState:
    refs: dict[str, str]
    gated: bool = False
    private: bool = False
    extra: dict = field(default_factory=dict)


class HubServer:
    """The server. `start()` binds 127.0.0.1 on a free port; `endpoint` is its base URL."""

    TOKEN = "hf_hubguard_test_token"

    def __init__(self, root: str | os.PathLike[str], *, redirect_lfs: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.redirect_lfs = redirect_lfs
        self.log: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified when no request is being handled
        self._in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._discussions: dict[tuple[str, str], list[dict]] = {}  # (repo_type, repo_id) -> discussions (see below)
        self.space_variables: dict[str, dict[str, dict]] = {}  # Space repo id -> its variables (hubserver_writes.py)

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "call start() first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- repos ---------------------------------------------------------------------------------------

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def add_repo(
        self,
        repo_id: str,
        folder: str | os.PathLike[str],
        *,
        revision: str = "main",
        repo_type: str = "model",
        gated: bool = False,
        private: bool = False,
        link: bool = False,
        created_at: str | None = None,
    ) -> str:
        """Publish `folder` as a new commit of `repo_id` and point `revision` (a branch or tag) at it.

        Returns the commit sha. `link=True` symlinks the folder instead of copying it (large benchmark files).
        `created_at` (ISO 8601) is the repo's creation time `GET /api/models` reports (default: its first commit's).
        """
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        digest = hashlib.sha1(repo_id.encode())
        for p in files:
            st = p.stat()
            digest.update(f"{p.relative_to(folder).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
        sha = digest.hexdigest()
        base = self.repo_dir(repo_id, repo_type)
        commit_dir = base / "commits" / sha
        if not commit_dir.exists():
            commit_dir.parent.mkdir(parents=True, exist_ok=True)
            if link:
                commit_dir.symlink_to(folder.resolve(), target_is_directory=True)
            else:
                shutil.copytree(folder, commit_dir)
        state = self._read_state(base) or _RepoState(refs={})
        state.refs[revision] = sha
        state.gated, state.private = gated, private
        try:
            first = json.loads((base / REPO_FILE).read_text()).get("created_at")
        except FileNotFoundError:
            first = None
        stamp = created_at or first or time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        (base / REPO_FILE).write_text(json.dumps({"schema_version": SCHEMA_VERSION, "refs": state.refs, "gated": gated,
                                                  "private": private, "created_at": stamp}))
        return sha

    def _set_ref(self, repo_type: str, repo_id: str, ref: str, sha: str) -> None:
        """Point branch/ref `ref` of an existing repo at commit `sha` (the caller holds `_lock`)."""
        base = self.repo_dir(repo_id, repo_type)
        data = json.loads((base / REPO_FILE).read_text())
        data["refs"][ref] = sha
        (base / REPO_FILE).write_text(json.dumps(data))

    @staticmethod
    def _read_state(base: Path) -> _RepoState | None:
        try:
            data = json.loads((base / REPO_FILE).read_text())
        except FileNotFoundError:
            return None
        return _RepoState(refs=dict(data.get("refs", {})), gated=bool(data.get("gated")), private=bool(data.get("private")))

    # -- faults and log ------------------------------------------------------------------------------

    def inject(self, kind: str, *, times: int = 1, match: str = "", method: str = "GET", **kwargs: int | None) -> None:
        """Make the next `times` matching requests fail with `kind` (see `Fault`)."""
        with self._lock:
            self._faults.append(Fault(kind=kind, times=times, match=match, method=method, **kwargs))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str, kinds: set[str]) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.times > 0 and f.kind in kinds and f.method == method and f.match in path:
                    f.times -= 1
                    return f
        return None

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.log.append(rec)
            self._in_flight -= 1
            self._settled.notify_all()

    def _wait_settled(self, timeout: float = 5.0) -> None:
        """Wait (lock held) until every request being handled has been logged.

        The client can hold a whole response before the handler thread reaches its `finally` and logs it;
        without this wait a test that counts requests right after a read races the server.
        """
        self._settled.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def requests(self, *, method: str | None = None, contains: str = "") -> list[RequestRecord]:
        with self._lock:
            self._wait_settled()
            return [r for r in self.log if (method is None or r.method == method) and contains in r.path]

    def served(self) -> dict[str, int]:
        """What the server served since the log was last cleared: every request (`requests`), split into API calls,
        HEADs, redirects (302), GETs of file content with and without a Range header, and body bytes sent."""
        recs = self.requests()
        content = [r for r in recs if r.method == "GET" and r.status in (200, 206) and not r.path.startswith("/api/")]
        return {
            "requests": len(recs),
            "api": sum(r.path.startswith("/api/") for r in recs),
            "head": sum(r.method == "HEAD" for r in recs),
            "redirects": sum(r.status in (301, 302, 307, 308) for r in recs),
            "range_gets": sum(r.range is not None for r in content),
            "full_gets": sum(r.range is None for r in content),
            "errors": sum(r.status >= 400 or r.status == 0 for r in recs),
            "bytes_sent": sum(r.bytes_sent for r in recs),
        }

    def clear_log(self) -> None:
        with self._lock:
            self._wait_settled()
            self.log.clear()

    # -- discussions and comments (added for the webhook bot tests; in memory) --------------------------

    def discussions(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        """The discussions and PRs of a repo as stored: `num`, `title`, `isPullRequest`, `status`, `events`
        (comments: `event["data"]["latest"]["raw"]`)."""
        with self._lock:
            return [dict(d) for d in self._discussions.get((repo_type, repo_id), [])]

    def comments(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """The text of every comment (descriptions included) on every discussion of a repo, oldest first."""
        return [e["data"]["latest"]["raw"] for d in self.discussions(repo_id, repo_type) for e in d["events"]
                if e["type"] == "comment"]


def _file_etag(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


class _Handler(WriteRoutes, ListRoute, BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr logging
        pass

    # -- plumbing ------------------------------------------------------------------------------------

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {HubServer.TOKEN}"

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, rec: RequestRecord) -> None:
        rec.status = status
        self.send_response(status)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            rec.bytes_sent = len(body)

    def _error(self, status: int, code: str, message: str, *, rec: RequestRecord) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message}, rec=rec)

    def _reset(self, rec: RequestRecord) -> None:
        """Close the TCP connection with a RST, no response."""
        rec.status = 0
        rec.aborted = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()  # with SO_LINGER 0, close() sends a RST instead of a FIN

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        self.hub._begin()
        url = urlsplit(self.path)
        rec = RequestRecord(
            method=self.command, path=url.path, range=self.headers.get("Range"), status=0, authorized=self._authorized()
        )
        try:
            fault = self.hub._take_fault(self.command, url.path, _REQUEST_FAULTS)
            if fault is not None:
                self._apply_simple_fault(fault, rec)
                return
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:1] == ["api"]:
                self._api(parts[1:], parse_qs(url.query), rec)
            elif parts[:1] == ["_cdn"]:
                self._cdn(parts[1:], rec)
            else:
                self._resolve(parts, rec)
        except (BrokenPipeError, ConnectionResetError):
            rec.aborted = True
            self.close_connection = True
        finally:
            self.hub._record(rec)

    def _apply_simple_fault(self, fault: Fault, rec: RequestRecord) -> None:
        if fault.kind == "reset":
            self._reset(rec)
        elif fault.kind == "status":
            self._error(fault.status, "Injected", f"injected {fault.status}", rec=rec)
        else:  # rate_limit
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            if fault.ratelimit_reset is not None:
                headers["RateLimit"] = f'"resolvers";r=0;t={fault.ratelimit_reset}'
                headers["RateLimit-Policy"] = '"fixed window";"resolvers";q=3000;w=300'
            body = b'{"error": "rate limited"}'
            self._send(429, body, headers, rec=rec)

    # -- repo lookup ---------------------------------------------------------------------------------

    def _repo(self, repo_type: str, repo_id: str, rev: str | None, rec: RequestRecord) -> tuple[_RepoState, str, Path] | None:
        base = self.hub.repo_dir(repo_id, repo_type)
        state = HubServer._read_state(base)
        if state is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", rec=rec)
            return None
        if state.private and not rec.authorized:
            self._error(401, "RepoNotFound", "Invalid username or password.", rec=rec)
            return None
        rev = rev or "main"
        sha = state.refs.get(rev) or (rev if (base / "commits" / rev).is_dir() else None)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", rec=rec)
            return None
        return state, sha, base / "commits" / sha

    # -- /api ----------------------------------------------------------------------------------------

    def _api(self, parts: list[str], query: dict[str, list[str]], rec: RequestRecord) -> None:
        if self._write_route(parts, query, rec):  # create_repo, preupload, commit (tests/hubserver_writes.py)
            return
        if self.command == "POST" and "discussions" not in parts:
            self._error(405, "MethodNotAllowed", "POST is served for discussions and uploads only", rec=rec)
            return
        if parts == ["agent-harnesses"] and self.command == "GET":
            # huggingface_hub's agent detection fetches this registry (then caches it for a day), as from the Hub
            self._send(200, json.dumps({"standardEnvVars": [], "harnesses": {}}).encode(), rec=rec)
            return
        if parts == ["models"]:
            self._list_models(query, rec)  # HfApi.list_models (tests/hubserver_writes.py: ListRoute)
            return
        if len(parts) < 3 or parts[0] not in {"models", "datasets", "spaces"}:
            self._error(404, "NotFound", "unknown API route", rec=rec)
            return
        repo_type = parts[0][:-1]
        repo_id = "/".join(parts[1:3])
        rest = parts[3:]
        if not rest or rest[0] == "revision":
            found = self._repo(repo_type, repo_id, "/".join(rest[1:]) or None, rec)
            if found is None:
                return
            state, sha, commit = found
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for p in sorted(commit.rglob("*")):
                if p.is_file():
                    sib: dict[str, object] = {"rfilename": p.relative_to(commit).as_posix()}
                    if blobs:
                        sib["size"] = p.stat().st_size
                        sib["blobId"] = _file_etag(p)
                        if p.suffix == ".safetensors":
                            sib["lfs"] = {"size": p.stat().st_size, "sha256": _file_etag(p) * 2, "pointerSize": 134}
                    siblings.append(sib)
            body = {
                "_id": sha[:24],
                "id": repo_id,
                "sha": sha,
                "private": state.private,
                "gated": "auto" if state.gated else False,
                "disabled": False,
                "tags": [],
                "siblings": siblings,
            }
            self._send(200, json.dumps(body).encode(), rec=rec)
        elif rest[0] == "tree" and len(rest) >= 2:
            found = self._repo(repo_type, repo_id, rest[1], rec)
            if found is None:
                return
            _, _, commit = found
            sub = "/".join(rest[2:])
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            start = commit / sub if sub else commit
            if not start.is_dir():
                self._error(404, "EntryNotFound", f"{sub} does not exist", rec=rec)
                return
            entries = []
            for p in sorted(start.rglob("*") if recursive else start.iterdir()):
                path = p.relative_to(commit).as_posix()
                if p.is_dir():
                    entries.append({"type": "directory", "oid": _file_etag(p), "size": 0, "path": path})
                else:
                    entry: dict[str, object] = {"type": "file", "oid": _file_etag(p), "size": p.stat().st_size, "path": path}
                    if p.suffix == ".safetensors":
                        entry["lfs"] = {"oid": _file_etag(p) * 2, "size": p.stat().st_size, "pointerSize": 134}
                    entries.append(entry)
            self._send(200, json.dumps(entries).encode(), rec=rec)
        elif rest[0] == "discussions":
            self._discussion_route(repo_type, repo_id, rest[1:], query, rec)
        elif repo_type == "space" and rest == ["variables"]:
            self._space_variables(repo_id, rec)  # GET: the Space's variables (tests/hubserver_writes.py)
        else:
            self._error(404, "NotFound", "unknown API route", rec=rec)

    # -- discussions and comments (added for the webhook bot tests) -------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - discussions and uploads (see _api)
        if not self.path.startswith("/api/"):
            rec = RequestRecord(method="POST", path=self.path, range=None, status=0, authorized=self._authorized())
            self.hub._begin()
            self._error(405, "MethodNotAllowed", "POST is served for discussions and uploads only", rec=rec)
            self.hub._record(rec)
            return
        self._dispatch()

    def _json_body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            data = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}

    def _discussion_route(self, repo_type: str, repo_id: str, rest: list[str], query: dict[str, list[str]],
                          rec: RequestRecord) -> None:
        """`GET|POST /api/{type}s/{repo}/discussions`, `GET .../discussions/{num}`, `POST .../discussions/{num}/comment`."""
        body = self._json_body() if self.command == "POST" else {}
        found = self._repo(repo_type, repo_id, None, rec)
        if found is None:
            return
        if self.command == "POST" and not rec.authorized:
            self._error(401, "Unauthorized", "Invalid username or password.", rec=rec)
            return
        store = self.hub._discussions.setdefault((repo_type, repo_id), [])
        now = "2024-01-01T00:00:00.000Z"

        def comment(text: str) -> dict:
            n = sum(len(d["events"]) for d in store) + 1
            return {"id": f"{n:024x}", "type": "comment", "createdAt": now, "author": {"name": "hubguard-bot"},
                    "data": {"edited": False, "hidden": False, "latest": {"raw": text}}}

        def public(d: dict, *, details: bool) -> dict:
            out = {k: d[k] for k in ("num", "title", "status", "isPullRequest", "createdAt", "author")}
            out["repo"] = {"name": repo_id, "type": repo_type}
            if details:
                out.update(events=d["events"], changes={"base": "refs/heads/main"}, filesWithConflicts=[], diff="")
            return out

        with self.hub._lock:
            if not rest and self.command == "POST":
                title = str(body.get("title") or "").strip()
                if len(title) < 3:
                    self._error(400, "BadRequest", "title must be at least 3 characters", rec=rec)
                    return
                pr = bool(body.get("pullRequest"))
                d = {"num": len(store) + 1, "title": title, "status": "draft" if pr else "open", "isPullRequest": pr,
                     "createdAt": now, "author": {"name": "hubguard-bot"}, "events": []}
                d["events"].append(comment(str(body.get("description") or "")))
                store.append(d)
                if pr:  # like the Hub: the pull request's git ref starts at main (commits then go to refs/pr/N)
                    self.hub._set_ref(repo_type, repo_id, f"refs/pr/{d['num']}", found[1])
                self._send(200, json.dumps({"num": d["num"], "url": f"/{repo_id}/discussions/{d['num']}"}).encode(), rec=rec)
                return
            if not rest:
                items = [public(d, details=False) for d in store]
                self._send(200, json.dumps({"discussions": items, "count": len(items), "start": 0}).encode(), rec=rec)
                return
            found = [d for d in store if rest[0].isdigit() and d["num"] == int(rest[0])]
            if not found:
                self._error(404, "NotFound", f"Discussion {rest[0]} not found", rec=rec)
                return
            d = found[0]
            if len(rest) == 1 and self.command in {"GET", "HEAD"}:
                self._send(200, json.dumps(public(d, details=True)).encode(), rec=rec)
            elif rest[1:] == ["comment"] and self.command == "POST":
                text = str(body.get("comment") or "")
                if not text.strip():
                    self._error(400, "BadRequest", "comment must not be empty", rec=rec)
                    return
                event = comment(text)
                d["events"].append(event)
                self._send(200, json.dumps({"newMessage": event}).encode(), rec=rec)
            else:
                self._error(404, "NotFound", "unknown API route", rec=rec)

    # -- file content --------------------------------------------------------------------------------

    def _resolve(self, parts: list[str], rec: RequestRecord) -> None:
        repo_type = "model"
        if parts[:1] in (["datasets"], ["spaces"]):
            repo_type, parts = parts[0][:-1], parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, "NotFound", "unknown route", rec=rec)
            return
        repo_id, rev, file = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        found = self._repo(repo_type, repo_id, rev, rec)
        if found is None:
            return
        state, sha, commit = found
        if state.gated and not rec.authorized:
            self._error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it.",
                rec=rec,
            )
            return
        path = commit / file
        if ".." in Path(file).parts or not path.is_file():
            self._error(404, "EntryNotFound", f"{file} does not exist on {rev}", rec=rec)
            return
        size = path.stat().st_size
        common = {
            "X-Repo-Commit": sha,
            "ETag": f'"{_file_etag(path)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if self.hub.redirect_lfs and path.suffix == ".safetensors":
            common["X-Linked-Size"] = str(size)
            common["X-Linked-Etag"] = common["ETag"]
            # Like the Hub: an absolute redirect to another origin (the CDN; here "localhost" instead of
            # "127.0.0.1", same server). huggingface_hub then reads the metadata from this 302 and the client
            # drops the Authorization header on the way, as it does for the Hub's signed CDN URLs.
            port = self.server.server_address[1]
            location = f"http://localhost:{port}/_cdn/" + quote(f"{repo_type}s/{repo_id}/{sha}/{file}")
            self._send(302, b"", {**common, "Location": location}, rec=rec)
            return
        self._content(path, common, rec)

    def _cdn(self, parts: list[str], rec: RequestRecord) -> None:
        if len(parts) < 5:
            self._error(404, "NotFound", "unknown route", rec=rec)
            return
        base = self.hub.root / parts[0] / parts[1] / parts[2] / "commits" / parts[3]
        file = "/".join(parts[4:])
        path = base / file
        if ".." in Path(file).parts or not path.is_file():
            self._error(404, "EntryNotFound", f"{file} does not exist", rec=rec)
            return
        headers = {"ETag": f'"{_file_etag(path)}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        self._content(path, headers, rec)

    def _content(self, path: Path, headers: dict[str, str], rec: RequestRecord) -> None:
        """Send the file (or its requested range): the only place content faults apply."""
        size = path.stat().st_size
        rng = _parse_range(self.headers.get("Range"), size)
        fault = self.hub._take_fault(self.command, urlsplit(self.path).path, _CONTENT_FAULTS)
        kind = fault.kind if fault is not None else None
        if rng == "invalid":
            self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"}, rec=rec)
            return
        if rng is None or kind == "ignore_range":
            start, stop, status = 0, size, 200
        else:
            start, stop = rng
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{size}"}
        if kind == "bad_content_range" and status == 206:
            shifted = min(start + 1, size - 1)
            headers["Content-Range"] = f"bytes {shifted}-{stop - 1}/{size}"
        rec.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        send_until = stop if kind != "short_body" else start + (stop - start) // 2
        with path.open("rb") as fh:
            fh.seek(start)
            pos = start
            while pos < send_until:
                chunk = fh.read(min(_CHUNK, send_until - pos))
                if not chunk:
                    break
                self.wfile.write(chunk)
                pos += len(chunk)
                rec.bytes_sent += len(chunk)
        if kind == "short_body":
            self.wfile.flush()
            self._reset(rec)


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None | str:
    """`(start, stop)` for a single `bytes=` range, None when absent, "invalid" when unsatisfiable."""
    if not value:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None  # multi-range or unknown unit: serve the whole file, like many servers do
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            start, stop = max(0, size - n), size
        else:
            start = int(first)
            stop = min(size, int(last) + 1) if last else size
    except ValueError:
        return None
    if start >= size or stop <= start:
        return "invalid"
    return start, stop


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A started `HubServer` with HF_ENDPOINT pointed at it, no HF_TOKEN, and a private hubguard remote cache.

    huggingface_hub reads HF_ENDPOINT once at import time, so its constants are patched too (for code that calls
    `hf_hub_download` / `snapshot_download` without an explicit endpoint).
    """
    from huggingface_hub import constants as hf_constants

    root = tmp_path_factory.mktemp("hub")
    server = HubServer(root / "repos").start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HUBGUARD_REMOTE_CACHE", str(root / "remote-cache"))
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(root / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(root / "no-token"))
    monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(root / "agent-harnesses.json"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    try:
        yield server
    finally:
        server.stop()
