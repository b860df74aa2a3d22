"""What the Hub look-alike (tests/support/hub_server.py) knows: users and tokens, repos as commits of
``path -> stored file`` snapshots, bytes by sha256, the request log and injected faults."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

ALICE, BOB = "hf_alice_token_for_tests_0123456789", "hf_bob_token_for_tests_0123456789"
TOKENS = {ALICE: "alice", BOB: "bob"}
ORGS = {"alice": ("acme",)}

# The Hub seeds every new repo with this file; LFS-tracked patterns decide the upload mode.
GITATTRIBUTES = "".join(
    f"{p} filter=lfs diff=lfs merge=lfs -text\n"
    for p in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.model", "*.gguf")
).encode()
LFS_THRESHOLD = 10 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size: int
    lfs: bool
    blob_id: str  # git blob sha1 of the content, or of the LFS pointer


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, StoredFile]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if len(rev) >= 7 and all(c in "0123456789abcdef" for c in rev):
            hits = [sha for sha in self.commits if sha.startswith(rev)]
            if len(hits) == 1:
                return hits[0]
        return None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    user: str | None


class HttpError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class HubState:
    """Everything the server knows, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.blobs: dict[str, bytes] = {}
        self.repos: dict[str, Repo] = {}
        self.uploads: dict[str, tuple[str, str, int]] = {}  # nonce -> (repo_id, oid, size)
        self.requests: list[Request] = []
        self.faults: dict[str, dict] = {}
        self._counter = 0

    def store(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def new_commit(self, repo: Repo, *, parent: str | None, files: dict[str, StoredFile], title: str,
                   message: str, author: str) -> Commit:
        self._counter += 1
        seed = json.dumps([parent, sorted((p, f.sha256) for p, f in files.items()), title, self._counter])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, files, title, message, author, _now())
        repo.commits[commit.sha] = commit
        return commit

    def stored_file(self, data: bytes, *, lfs: bool) -> StoredFile:
        sha = self.store(data)
        blob = git_blob_sha1(lfs_pointer(sha, len(data)) if lfs else data)
        return StoredFile(sha, len(data), lfs, blob)

    def trip(self, op: str) -> int | None:
        """Status to fail `op` with, if an injected fault says so."""
        fault = self.faults.get(op)
        if fault is None:
            return None
        if fault["skip"] > 0:
            fault["skip"] -= 1
            return None
        fault["times"] -= 1
        if fault["times"] <= 0:
            del self.faults[op]
        return fault["status"]
