"""A small Hugging Face Hub look-alike for offline tests: standard library only.

It speaks the subset of the Hub's HTTP API that the unmodified ``huggingface_hub`` client
uses to create repos, commit (regular files inline, large files through the git-LFS batch
protocol), tag, branch, list and download.  Bytes are stored by sha256; commits are
snapshots of ``path -> file`` maps.  Tokens come from a fixed map; writes need a valid
token whose user owns the namespace, like on the real Hub.

``HubServer.fail(...)`` injects faults (a failed commit call, a failed Nth LFS upload) so
tests can interrupt a push half way and check that a rerun completes it.  The ``hub``
fixture (tests/conftest.py) runs one server per test and points HF_ENDPOINT at it.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .hub_state import (GITATTRIBUTES, LFS_THRESHOLD, ORGS, TOKENS, Commit, HttpError, HubState, Repo, Request,
                         lfs_pointer)

class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a stopped server really stops answering
    # (no kept-alive connection survives in the client's pool).
    protocol_version = "HTTP/1.0"
    server: "_Server"

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass

    def _dispatch(self) -> None:
        method, url = self.command, urlsplit(self.path)
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.user: str | None = None
        # Read the whole body before answering: closing a socket with unread bytes can reset
        # the connection before the client sees the error status.
        self.body = self._read_body() if method in ("POST", "PUT") else b""
        status = 500
        try:
            self.user = self._authenticate()
            with self.server.state.lock:
                status = self._route(method, segs)
        except HttpError as err:
            status = err.status
            headers = {"X-Error-Message": err.message, "X-Error-Code": err.code, "X-Repo-Commit": err.commit}
            self._send(err.status, json.dumps({"error": err.message}).encode(), head=method == "HEAD",
                       headers={k: v for k, v in headers.items() if v})
        except Exception as exc:  # a bug in this server: answer, so the test fails instead of hanging
            self._send(status, json.dumps({"error": f"test hub server bug: {exc!r}"}).encode())
            raise
        finally:
            with self.server.state.lock:
                self.server.state.requests.append(Request(method, url.path, status, self.user))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- plumbing -------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self):
        return json.loads(self.body or b"{}")

    def _send(self, status: int, body: bytes = b"", *, headers: dict[str, str] | None = None,
              content_type: str = "application/json", head: bool = False) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        return status

    def _json(self, payload, status: int = 200) -> int:
        return self._send(status, json.dumps(payload).encode())

    def _authenticate(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        user = self.server.tokens.get(auth.removeprefix("Bearer").strip())
        if user is None:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_id: str, *, write: bool = False) -> Repo:
        repo = self.server.state.repos.get(repo_id)
        visible = repo is not None and (not repo.private or self._may_write(repo_id))
        if write and self.user is None:
            raise HttpError(401, "You must be authenticated to write to a repository")
        if not visible:
            raise HttpError(404, "Repository not found", code="RepoNotFound")
        if write and not self._may_write(repo_id):
            raise HttpError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _may_write(self, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return self.user is not None and (namespace == self.user or namespace in self.server.orgs.get(self.user, ()))

    def _commit(self, repo: Repo, rev: str) -> Commit:
        sha = repo.resolve(rev)
        if sha is None:
            raise HttpError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return repo.commits[sha]

    @property
    def base(self) -> str:
        return self.server.url

    # -- routes ---------------------------------------------------------------------------
    def _route(self, method: str, segs: list[str]) -> int:
        if segs[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if segs[:2] == ["api", "whoami-v2"] and method == "GET":
            if self.user is None:
                raise HttpError(401, "Invalid credentials in Authorization header")
            orgs = [{"name": o} for o in self.server.orgs.get(self.user, ())]
            return self._json({"type": "user", "name": self.user, "orgs": orgs})
        if segs[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(self._json_body())
        if len(segs) >= 4 and segs[:2] == ["api", "models"]:
            repo_id, action, rest = f"{segs[2]}/{segs[3]}", (segs[4] if len(segs) > 4 else None), segs[5:]
            return self._api(method, repo_id, action, rest)
        if len(segs) == 6 and segs[1].endswith(".git") and segs[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{segs[0]}/{segs[1][:-4]}", self._json_body())
        if len(segs) == 2 and segs[0] == "_lfs_upload" and method == "PUT":
            return self._lfs_put(segs[1])
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(method, f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]))
        raise HttpError(404, f"no route for {method} /{'/'.join(segs)}")

    def _api(self, method: str, repo_id: str, action: str | None, rest: list[str]) -> int:
        if action in (None, "revision") and method == "GET":
            repo = self._repo(repo_id)
            commit = self._commit(repo, rest[0] if rest else "main")
            return self._json({
                "_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
                "sha": commit.sha, "lastModified": commit.date, "private": repo.private, "disabled": False,
                "gated": False, "tags": [], "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            })
        if action == "preupload" and method == "POST":
            return self._preupload(self._repo(repo_id, write=True), rest[0], self._json_body())
        if action == "commit" and method == "POST":
            return self._create_commit(self._repo(repo_id, write=True), rest[0])
        if action == "refs" and method == "GET":
            repo = self._repo(repo_id)

            def refs(kind: str, table: dict[str, str]) -> list[dict]:
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in sorted(table.items())]

            return self._json({"branches": refs("heads", repo.branches), "converts": [],
                               "tags": refs("tags", repo.tags), "pullRequests": []})
        if action == "commits" and method == "GET":
            repo = self._repo(repo_id)
            commit, out = self._commit(repo, rest[0] if rest else "main"), []
            while commit is not None:
                out.append({"id": commit.sha, "title": commit.title, "message": commit.message,
                            "authors": [{"user": commit.author}], "date": commit.date})
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return self._json(out)
        if action == "tree" and method == "GET":
            return self._tree(self._repo(repo_id), rest[0] if rest else "main", "/".join(rest[1:]))
        if action == "tag" and method == "POST":
            repo = self._repo(repo_id, write=True)
            status = self.server.state.trip("create_tag")
            if status:
                raise HttpError(status, "injected failure: create tag")
            commit, tag = self._commit(repo, rest[0]), self._json_body()["tag"]
            if tag in repo.tags:
                raise HttpError(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.sha
            return self._json({"name": tag})
        if action == "tag" and method == "DELETE":
            repo = self._repo(repo_id, write=True)
            if repo.tags.pop(rest[0], None) is None:
                raise HttpError(404, f"Tag {rest[0]} not found", code="RevisionNotFound")
            return self._json({})
        if action == "branch" and method == "POST":
            repo, branch = self._repo(repo_id, write=True), rest[0]
            start = self._json_body().get("startingPoint") or "main"
            if branch in repo.branches:
                raise HttpError(409, f"Branch {branch} already exists")
            repo.branches[branch] = self._commit(repo, start).sha
            return self._json({})
        raise HttpError(404, f"no route for {method} {action}")

    def _create_repo(self, payload: dict) -> int:
        if self.user is None:
            raise HttpError(401, "You must be authenticated to create a repository")
        namespace = payload.get("organization") or self.user
        repo_id = f"{namespace}/{payload['name']}"
        if not self._may_write(repo_id):
            raise HttpError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        url = f"{self.base}/{repo_id}"
        state = self.server.state
        if repo_id in state.repos:
            return self._send(409, json.dumps({"error": "You already created this model repo", "url": url}).encode())
        repo = Repo(repo_id, private=payload.get("visibility") == "private")
        files = {".gitattributes": state.stored_file(GITATTRIBUTES, lfs=False)}
        repo.branches["main"] = state.new_commit(repo, parent=None, files=files, title="initial commit",
                                                 message="", author=self.user).sha
        state.repos[repo_id] = repo
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _is_lfs(self, commit: Commit, path: str, size: int, sample: bytes) -> bool:
        attrs = commit.files.get(".gitattributes")
        text = self.server.state.blobs[attrs.sha256].decode() if attrs else ""
        patterns = [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        return size >= LFS_THRESHOLD or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in patterns)

    def _preupload(self, repo: Repo, rev: str, payload: dict) -> int:
        commit, files = self._commit(repo, rev), []
        for item in payload["files"]:
            lfs = self._is_lfs(commit, item["path"], item["size"], base64.b64decode(item["sample"]))
            existing = commit.files.get(item["path"])
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.blob_id)
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": False, "oid": oid})
        return self._json({"files": files, "commitOid": commit.sha})

    def _lfs_batch(self, repo_id: str, payload: dict) -> int:
        repo, state, objects = self._repo(repo_id, write=True), self.server.state, []
        for obj in payload["objects"]:
            if obj["oid"] in repo.lfs_oids:
                objects.append({"oid": obj["oid"], "size": obj["size"]})
                continue
            nonce = secrets.token_hex(8)
            state.uploads[nonce] = (repo_id, obj["oid"], obj["size"])
            objects.append({"oid": obj["oid"], "size": obj["size"], "authenticated": True,
                            "actions": {"upload": {"href": f"{self.base}/_lfs_upload/{nonce}"}}})
        return self._json({"transfer": "basic", "objects": objects})

    def _lfs_put(self, nonce: str) -> int:
        state, data = self.server.state, self.body
        if nonce not in state.uploads:
            raise HttpError(403, "unknown or expired upload URL")
        status = state.trip("lfs_put")
        if status:
            raise HttpError(status, "injected failure: LFS upload")
        repo_id, oid, size = state.uploads.pop(nonce)
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HttpError(400, "uploaded bytes do not match the announced oid/size")
        state.store(data)
        state.repos[repo_id].lfs_oids.add(oid)
        return self._send(200)

    def _create_commit(self, repo: Repo, branch: str) -> int:
        state = self.server.state
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        status = state.trip("commit")
        if status:
            raise HttpError(status, "injected failure: commit")
        if branch not in repo.branches:
            raise HttpError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        head = repo.branches[branch]
        header = next(item["value"] for item in lines if item["key"] == "header")
        parent = header.get("parentCommit")
        if parent and not head.startswith(parent):
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = state.stored_file(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in repo.lfs_oids:
                    raise HttpError(400, f"LFS pointer for {value['path']} points to a missing object")
                files[value["path"]] = state.stored_file(state.blobs[value["oid"]], lfs=True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HttpError(404, "A file with this name doesn't exist", code="EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
        commit = state.new_commit(repo, parent=head, files=files, title=header["summary"],
                                  message=header.get("description", ""), author=self.user or "")
        repo.branches[branch] = commit.sha
        return self._json({"success": True, "commitOid": commit.sha, "hookOutput": "",
                           "commitUrl": f"{self.base}/{repo.repo_id}/commit/{commit.sha}"})

    def _tree(self, repo: Repo, rev: str, under: str) -> int:
        commit = self._commit(repo, rev)
        prefix = f"{under}/" if under else ""
        recursive = self.query.get("recursive", "false").lower() in ("1", "true")
        entries: dict[str, dict] = {}
        for path, f in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder,
                                                "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0})
            if recursive or len(parts) == 1:
                entry = {"type": "file", "path": path, "size": f.size, "oid": f.blob_id}
                if f.lfs:
                    pointer = lfs_pointer(f.sha256, f.size)
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(pointer)}
                entries[path] = entry
        if under and not entries:
            raise HttpError(404, f"{under} not found", code="EntryNotFound")
        return self._json(list(entries.values()))

    def _resolve(self, method: str, repo_id: str, rev: str, path: str) -> int:
        commit = self._commit(self._repo(repo_id), rev)
        f = commit.files.get(path)
        if f is None:
            raise HttpError(404, "Entry not found", code="EntryNotFound", commit=commit.sha)
        data = self.server.state.blobs[f.sha256]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{f.sha256 if f.lfs else f.blob_id}"',
                   "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
        status, rng = 200, self.headers.get("Range", "")
        if rng.startswith("bytes=") and method == "GET":
            start, _, end = rng[6:].partition("-")
            lo, hi = int(start or 0), int(end) if end else len(data) - 1
            headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
            data, status = data[lo:hi + 1], 206
        return self._send(status, data, headers=headers, content_type="application/octet-stream",
                          head=method == "HEAD")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    tokens: dict[str, str]
    orgs: dict[str, tuple[str, ...]]
    url: str


class HubServer:
    """The server on 127.0.0.1 with an ephemeral port; `with HubServer() as hub: hub.url`."""

    def __init__(self, *, tokens: dict[str, str] | None = None, orgs: dict[str, tuple[str, ...]] | None = None):
        self.state = HubState()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.state = self.state
        self._httpd.tokens = dict(TOKENS if tokens is None else tokens)
        self._httpd.orgs = dict(ORGS if orgs is None else orgs)
        self.url = self._httpd.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="hub-server", daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- for tests ------------------------------------------------------------------------
    def fail(self, op: str, *, status: int = 500, times: int = 1, skip: int = 0) -> None:
        """Make the next `times` calls of `op` ("commit", "lfs_put", "create_tag") answer
        `status`, after letting `skip` of them through."""
        with self.state.lock:
            self.state.faults[op] = {"status": status, "times": times, "skip": skip}

    def requests(self, method: str | None = None, contains: str = "") -> list[Request]:
        with self.state.lock:
            return [r for r in self.state.requests
                    if (method is None or r.method == method) and contains in r.path]

    def repo(self, repo_id: str) -> Repo:
        with self.state.lock:
            return self.state.repos[repo_id]

    def files_at(self, repo_id: str, rev: str) -> dict[str, bytes]:
        """Path -> bytes of a revision, read straight from the server's store."""
        with self.state.lock:
            repo = self.state.repos[repo_id]
            sha = repo.resolve(rev)
            assert sha is not None, f"{rev} not in {repo_id}"
            return {p: self.state.blobs[f.sha256] for p, f in repo.commits[sha].files.items()}
