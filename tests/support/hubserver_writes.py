"""The write routes of the test Hub server (tests/hubserver.py): what `HfApi.create_repo` and `upload_folder` /
`create_commit` call, so uploads (e.g. `hubguard registry push`) run against a real server.

- `POST /api/repos/create` (`{"name", "organization", "type", "visibility"}`): an empty repo; 409 if it exists.
- `POST /api/validate-yaml`: a README.md's YAML front matter must parse (400 with `errors` otherwise).
- `POST /api/{type}s/{org}/{name}/preupload/{rev}`: every file is answered `"uploadMode": "regular"` (the Hub does
  that for small text files), so its content travels inline in the commit; no LFS / Xet upload is served.
- `POST /api/{type}s/{org}/{name}/commit/{rev}` (NDJSON: a header, then `file` (base64 content), `deletedFile` /
  `deletedFolder` lines): a new commit on `rev`. A pull request is opened first (the discussions route, which
  creates `refs/pr/N` at main, as the Hub does) and committed to; `?create_pr=1` and `lfsFile` lines (no LFS
  upload route here) are refused with 400.

- Space settings (added for `hubguard space deploy`): `POST /api/spaces/{org}/{name}/variables` (`{"key", "value",
  "description"}`, `HfApi.add_space_variable`) and `GET` of the same path (`get_space_variables`), kept in memory
  (`HubServer.space_variables`); both need the token, like the Hub.

Every write needs `Authorization: Bearer <HubServer.TOKEN>` (401 otherwise, like the Hub).
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.hubserver import RequestRecord


class WriteRoutes:
    """Mixin for the server's request handler (it provides hub, _repo, _send, _error, headers, rfile)."""

    hub: Any

    def _write_route(self, parts: list[str], query: dict[str, list[str]], rec: RequestRecord) -> bool:
        """Serve `parts` (the path after /api/) if it is a write route; False when it is not one."""
        if self.command != "POST":  # type: ignore[attr-defined]
            return False
        if parts == ["repos", "create"]:
            self._create_repo(rec)
            return True
        if parts == ["validate-yaml"]:
            self._validate_yaml(rec)
            return True
        if len(parts) == 4 and parts[0] == "spaces" and parts[3] == "variables":
            self._space_variables("/".join(parts[1:3]), rec)
            return True
        if len(parts) >= 5 and parts[0] in {"models", "datasets", "spaces"} and parts[3] in {"preupload", "commit"}:
            repo_type, repo_id, rev = parts[0][:-1], "/".join(parts[1:3]), "/".join(parts[4:])
            if not rec.authorized:
                self._error(401, "Unauthorized", "Invalid username or password.", rec=rec)  # type: ignore[attr-defined]
                return True
            if parts[3] == "preupload":
                self._preupload(repo_type, repo_id, rev, rec)
            elif query.get("create_pr", ["0"])[0] == "1":
                self._error(400, "BadRequest", "the test server takes no ?create_pr=1 commits: open the pull request "
                            "(POST .../discussions with pullRequest) and commit to refs/pr/N", rec=rec)  # type: ignore[attr-defined]
            else:
                self._commit(repo_type, repo_id, rev, rec)
            return True
        return False

    def _space_variables(self, repo_id: str, rec: RequestRecord) -> None:
        """`POST` (add or update one variable) and `GET` (list) of a Space's variables: {key: {"value", ...}}."""
        if self._repo("space", repo_id, None, rec) is None:  # type: ignore[attr-defined]
            return
        if not rec.authorized:
            self._error(401, "Unauthorized", "Invalid username or password.", rec=rec)  # type: ignore[attr-defined]
            return
        store = self.hub.space_variables.setdefault(repo_id, {})
        if self.command == "POST":  # type: ignore[attr-defined]
            body = self._json_body()  # type: ignore[attr-defined]
            key, value = body.get("key"), body.get("value")
            if not isinstance(key, str) or not key or not isinstance(value, str):
                self._error(400, "BadRequest", "a JSON body with string 'key' and 'value' is required", rec=rec)  # type: ignore[attr-defined]
                return
            store[key] = {"value": value, "description": body.get("description"), "updatedAt": "2024-01-01T00:00:00.000Z"}
        self._send(200, json.dumps(store).encode(), rec=rec)  # type: ignore[attr-defined]

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)  # type: ignore[attr-defined]
        return self.rfile.read(length) if length else b""  # type: ignore[attr-defined]

    def _url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.hub.endpoint}/{prefix}{repo_id}"

    def _create_repo(self, rec: RequestRecord) -> None:
        body = self._json_body()  # type: ignore[attr-defined]  # {} unless a JSON object
        if not body.get("name"):
            self._error(400, "BadRequest", "a JSON body with 'name' is required", rec=rec)  # type: ignore[attr-defined]
            return
        if not rec.authorized:
            self._error(401, "Unauthorized", "Invalid username or password.", rec=rec)  # type: ignore[attr-defined]
            return
        org, name, repo_type = body.get("organization"), str(body["name"]), str(body.get("type") or "model")
        repo_id = f"{org}/{name}" if org else name
        if repo_id.count("/") != 1 or repo_type not in {"model", "dataset", "space"}:
            self._error(400, "BadRequest", f"invalid repo id {repo_id!r} or type {repo_type!r}", rec=rec)  # type: ignore[attr-defined]
            return
        url = self._url(repo_type, repo_id)
        with self.hub._lock:
            if (self.hub.repo_dir(repo_id, repo_type) / "commits").is_dir():
                body_409 = json.dumps({"error": "You already created this repo", "url": url}).encode()
                self._send(409, body_409, rec=rec)  # type: ignore[attr-defined]
                return
            with tempfile.TemporaryDirectory() as empty:
                self.hub.add_repo(repo_id, empty, repo_type=repo_type, private=body.get("visibility") == "private")
        self._send(200, json.dumps({"url": url, "name": repo_id}).encode(), rec=rec)  # type: ignore[attr-defined]

    def _validate_yaml(self, rec: RequestRecord) -> None:
        """`HfApi` checks a README.md's YAML front matter here before uploading it: 400 with errors if unparsable."""
        import yaml

        lines = str(self._json_body().get("content") or "").splitlines()  # type: ignore[attr-defined]
        errors = []
        if lines[:1] == ["---"] and "---" in lines[1:]:
            try:
                yaml.safe_load("\n".join(lines[1 : lines.index("---", 1)]))
            except yaml.YAMLError as exc:
                errors.append({"message": f"Invalid YAML: {exc}"})
        status, body = (400, {"errors": errors}) if errors else (200, {"warnings": []})
        self._send(status, json.dumps(body).encode(), rec=rec)  # type: ignore[attr-defined]

    def _preupload(self, repo_type: str, repo_id: str, rev: str, rec: RequestRecord) -> None:
        if self._repo(repo_type, repo_id, rev, rec) is None:  # type: ignore[attr-defined]
            return
        files = self._json_body().get("files", [])  # type: ignore[attr-defined]
        if not isinstance(files, list):
            self._error(400, "BadRequest", "a JSON body with 'files' is required", rec=rec)  # type: ignore[attr-defined]
            return
        out = [{"path": f.get("path"), "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
        self._send(200, json.dumps({"files": out, "commitOid": None}).encode(), rec=rec)  # type: ignore[attr-defined]

    def _commit(self, repo_type: str, repo_id: str, rev: str, rec: RequestRecord) -> None:
        found = self._repo(repo_type, repo_id, rev, rec)  # type: ignore[attr-defined]
        if found is None:
            return
        state, _, commit = found
        try:
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            self._error(400, "BadRequest", f"the commit body is not NDJSON: {exc}", rec=rec)  # type: ignore[attr-defined]
            return
        if not lines or lines[0].get("key") != "header" or not lines[0].get("value", {}).get("summary"):
            self._error(400, "BadRequest", "the commit needs a header line with a summary", rec=rec)  # type: ignore[attr-defined]
            return
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "tree"
            shutil.copytree(commit, work)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = PurePosixPath(str(value.get("path") or ""))
                if not path.parts or path.is_absolute() or ".." in path.parts:
                    self._error(400, "BadRequest", f"invalid path {str(path)!r}", rec=rec)  # type: ignore[attr-defined]
                    return
                target = work.joinpath(*path.parts)
                if key == "file":
                    try:
                        data = base64.b64decode(value.get("content") or "", validate=True)
                    except binascii.Error:
                        self._error(400, "BadRequest", f"{path}: content is not base64", rec=rec)  # type: ignore[attr-defined]
                        return
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                elif key == "deletedFile":
                    target.unlink(missing_ok=True)
                elif key == "deletedFolder":
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    self._error(400, "BadRequest", f"{key!r} lines are not served by the test server", rec=rec)  # type: ignore[attr-defined]
                    return
            with self.hub._lock:
                sha = self.hub.add_repo(repo_id, work, revision=rev, repo_type=repo_type, gated=state.gated,
                                        private=state.private)
        body = {"commitUrl": f"{self._url(repo_type, repo_id)}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}
        self._send(200, json.dumps(body).encode(), rec=rec)  # type: ignore[attr-defined]


class ListRoute:
    """`GET /api/models[?sort=createdAt&limit=N&expand=...]`: the public model repos, newest first, one page (the Hub
    pages with a `Link` header; with few repos here there is one page). Each item: id, createdAt, sha, private."""

    hub: Any

    def _list_models(self, query: dict[str, list[str]], rec: RequestRecord) -> None:
        items = []
        for state_file in sorted((self.hub.root / "models").glob("*/*/repo.json")):
            data = json.loads(state_file.read_text())
            if data.get("private") and not rec.authorized:
                continue
            repo_id = state_file.parent.relative_to(self.hub.root / "models").as_posix()
            items.append({"id": repo_id, "_id": repo_id, "createdAt": data.get("created_at"),
                          "sha": data["refs"].get("main"), "private": bool(data.get("private"))})
        items.sort(key=lambda i: i["createdAt"] or "", reverse=True)
        limit = query.get("limit", [None])[0]
        if limit is not None and limit.isdigit():
            items = items[: int(limit)]
        self._send(200, json.dumps(items).encode(), rec=rec)  # type: ignore[attr-defined]
