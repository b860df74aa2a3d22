"""The Hugging Face Hub: download a pinned snapshot, push a folder as one tagged commit.

Plain arguments in, frozen dataclasses out; no SQL and no `Registry` here.  Every
huggingface_hub failure leaves as a one-line `HubError` with a hint.  Tokens are only
handed to huggingface_hub, never put in a result, a message or a card.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, when it is first imported;
this module reads them again on every call, so a change made after that import counts.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote

from lorareg.errors import (CheckpointError, HubError, IntegrityError, LoraregError, NotFoundError,
                            PickleRefusedError)
from lorareg.registry.hub_errors import to_hub_error
from lorareg.store.pickles import HUB_PICKLE_PATTERNS
from lorareg.registry.hub_errors import translated as _translated

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = ["HubSnapshot", "PushResult", "download", "is_hub_uri", "is_repo_id", "parse_hub_uri", "push_folder"]

SCHEME = "hf://"
_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")
_REF = re.compile(r"[A-Za-z0-9_][\w.+/-]{0,127}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# What a checkpoint needs: weights, configs, tokenizer and generation files, chat templates.
_ALLOW = ["*.safetensors", "*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
# Top level only: subfolders hold training checkpoints, ONNX or original-format copies.
_IGNORE = ["*/*"]
# The Hub seeds every repo with this file; a pushed version is compared without it.
_SEEDED = ".gitattributes"
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSnapshot:
    repo_id: str
    revision: str
    commit_sha: str
    path: Path


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit_sha: str
    tag: str
    branch: str
    url: str
    noop: bool
    uploaded: tuple[str, ...]
    reused: tuple[str, ...]
    deleted: tuple[str, ...] = ()
    endpoint: str = ""


def is_repo_id(s: str) -> bool:
    """ORG/NAME as the Hub accepts it (no '--' or '..', no trailing .git)."""
    return (isinstance(s, str) and _REPO_ID.fullmatch(s) is not None and ".." not in s and "--" not in s
            and not s.endswith(".git"))


def is_hub_uri(s: str) -> bool:
    return isinstance(s, str) and s.startswith(SCHEME)


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """`hf://ORG/NAME[@REVISION]` -> (repo id, revision or None)."""
    hint = "write it as hf://ORG/NAME or hf://ORG/NAME@REVISION"
    if not is_hub_uri(uri):
        raise HubError(f"not a Hub reference: {uri!r}", hint=hint)
    repo_id, at, revision = uri[len(SCHEME):].partition("@")
    _check_repo_id(repo_id, hint=hint)
    if not at:
        return repo_id, None
    revision = unquote(revision)
    if not revision or any(c.isspace() for c in revision):
        raise HubError(f"bad revision in {uri!r}", hint=hint)
    return repo_id, revision


def download(*, repo_id: str, revision: str | None, allow_pickle: bool = False, endpoint: str | None = None,
             token: str | None = None, cache_dir: Path | None = None,
             kind: Literal["base", "adapter"] = "base") -> HubSnapshot:
    """Snapshot `repo_id` at `revision` into the Hugging Face cache; offline from a warm cache."""
    from huggingface_hub import snapshot_download

    _check_repo_id(repo_id)
    if kind not in ("base", "adapter"):
        raise LoraregError(f"unknown kind {kind!r}", hint="use kind='base' or kind='adapter'")
    asked = revision or "main"
    ep, offline = _endpoint(endpoint), _offline()
    with _translated(repo_id=repo_id, endpoint=ep, revision=asked, token=token, offline=offline):
        path = Path(snapshot_download(
            repo_id, revision=asked, cache_dir=cache_dir, endpoint=ep, token=token, local_files_only=offline,
            allow_patterns=_ALLOW + (list(HUB_PICKLE_PATTERNS) if allow_pickle else []), ignore_patterns=_IGNORE,
        ))
    # The cache names each snapshot folder after the commit the revision resolved to.
    commit_sha = path.name
    if not _COMMIT.fullmatch(commit_sha):
        raise HubError(f"{repo_id}@{asked} resolved to {path}, not a commit snapshot",
                       hint="clear that repo from the Hugging Face cache and retry")
    _check_weights(path, repo_id=repo_id, commit_sha=commit_sha, kind=kind, allow_pickle=allow_pickle,
                   cache_dir=cache_dir)
    return HubSnapshot(repo_id=repo_id, revision=asked, commit_sha=commit_sha, path=path)


def push_folder(*, folder: Path, repo_id: str, tag: str, branch: str | None = None, private: bool = False,
                endpoint: str | None = None, token: str | None = None, commit_message: str,
                card: str | None = None, expected: Mapping[str, str] | None = None) -> PushResult:
    """Upload `folder` (plus `card` as README.md, replacing any there) to `repo_id` in one
    commit tagged `tag`.  `expected` (relative name -> sha256) is checked against the bytes
    as they are hashed for the upload, so corrupt store files are never pushed.

    Re-pushing the same content under an existing tag makes no commit (`noop`).  Bytes the
    Hub already holds, unchanged at the branch head or as LFS objects left by an
    interrupted push, are not sent again (`reused`).  Files on the branch that are not part
    of this version are deleted in the same commit, so the tag names exactly this folder.
    """
    from huggingface_hub import CommitOperationDelete, HfApi

    _check_repo_id(repo_id)
    branch = branch or "main"
    _check_ref(tag, what="tag")
    _check_ref(branch, what="branch")
    local = _local_files(Path(folder), card, expected)
    if _offline():
        raise HubError("cannot push while HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE and rerun lorareg push")
    token = _resolve_token(token)
    if card is not None and token in card:
        raise HubError("the model card contains your Hub token; refusing to push it",
                       hint="remove the token from the recipe or inputs, and revoke it on the Hub")
    ep = _endpoint(endpoint)
    api = HfApi(endpoint=ep, token=token, library_name="lorareg")
    url = f"{ep}/{repo_id}/tree/{quote(tag, safe='')}"

    def result(sha: str, *, noop: bool, uploaded=(), reused=(), deleted=()) -> PushResult:
        return PushResult(repo_id=repo_id, commit_sha=sha, tag=tag, branch=branch, url=url, noop=noop,
                          uploaded=tuple(sorted(uploaded)), reused=tuple(sorted(reused)),
                          deleted=tuple(sorted(deleted)), endpoint=ep)

    with _translated(repo_id=repo_id, endpoint=ep, revision=branch, token=token, push=True):
        api.create_repo(repo_id, private=private or None, exist_ok=True)  # None: the namespace's default
        tags, heads = _refs(api, repo_id)
        if tag in tags:
            if _same_tree(local, _remote_files(api, repo_id, tags[tag])):
                return result(tags[tag], noop=True, reused=local)
            raise HubError(f"tag {tag} on {repo_id} already points at other content",
                           hint="push with --tag NEW, or delete the tag on the Hub")
        if branch not in heads:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            tags, heads = _refs(api, repo_id)
        head = heads[branch]
        remote = _remote_files(api, repo_id, head)
        same = {p for p, f in local.items() if _same_file(f, remote.get(p))}
        stale = [p for p in remote if p not in local and p != _SEEDED]
        changed = [f for p, f in sorted(local.items()) if p not in same]
        commit_sha, sent_before = head, set()
        if changed or stale:
            adds = [f.operation() for f in changed]
            present = _lfs_present(api, repo_id, branch, adds)
            ops = [*adds, *(CommitOperationDelete(path_in_repo=p) for p in stale)]
            # parent_commit: if the branch moved since it was read, fail rather than
            # delete or overwrite files somebody else just pushed.
            commit_sha = api.create_commit(repo_id, operations=ops, commit_message=commit_message,
                                           revision=branch, parent_commit=head).oid
            sent_before = {op.path_in_repo for op in adds
                           if getattr(op, "_upload_mode", None) == "lfs" and op.upload_info.sha256.hex() in present}
    try:
        api.create_tag(repo_id, tag=tag, revision=commit_sha, tag_message=commit_message)
    except Exception as exc:
        err = to_hub_error(exc, repo_id=repo_id, endpoint=ep, revision=tag, token=token, push=True)
        if err is None:
            raise
        raise HubError(f"commit {commit_sha[:12]} is on {repo_id}@{branch} but tagging it {tag} failed: "
                       f"{err.message}", hint="rerun the same lorareg push: it tags the existing commit") from exc
    uploaded = {f.path for f in changed} - sent_before
    return result(commit_sha, noop=False, uploaded=uploaded, reused=same | sent_before, deleted=stale)


# -- local side ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LocalFile:
    path: str
    size: int
    sha256: str
    source: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def git_blob_sha1(self) -> str:
        h = hashlib.sha1(b"blob %d\0" % self.size)  # git's id for a non-LFS file
        if self.data is None:
            return _hashed(self.source, h).hexdigest()
        h.update(self.data)
        return h.hexdigest()

    def operation(self) -> Any:
        from huggingface_hub import CommitOperationAdd

        op = CommitOperationAdd(path_in_repo=self.path, path_or_fileobj=self.source if self.data is None else self.data)
        try:
            op.upload_info.sha256 = bytes.fromhex(self.sha256)  # spares huggingface_hub a second read
        except AttributeError:
            pass
        return op


def _hashed(path: Path, h: Any) -> Any:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h


def _local_files(folder: Path, card: str | None, expected: Mapping[str, str] | None = None) -> dict[str, _LocalFile]:
    if not folder.is_dir():
        raise NotFoundError(f"{folder} is not a folder", hint="push a registered version: lorareg push NAME@VERSION")
    files: dict[str, _LocalFile] = {}
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in (".git", ".cache"))
        for name in sorted(names):
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            if (card is not None and rel == "README.md") or (expected is not None and rel not in expected):
                continue  # the card replaces README.md; with `expected`, only the recorded files go
            sha = _hashed(path, hashlib.sha256()).hexdigest()
            if expected is not None and expected[rel] != sha:
                raise IntegrityError(f"{rel} in {folder} does not hash to its recorded sha256; refusing to push it",
                                     hint="run: lorareg verify --all")
            files[rel] = _LocalFile(rel, path.stat().st_size, sha, source=path)
    if card is not None:
        data = card.encode()
        files["README.md"] = _LocalFile("README.md", len(data), hashlib.sha256(data).hexdigest(), data=data)
    if not files:
        raise HubError(f"nothing to push: {folder} is empty", hint="push a version that has its files: lorareg ls")
    return files


def _check_weights(path: Path, *, repo_id: str, commit_sha: str, kind: str, allow_pickle: bool,
                   cache_dir: Path | None) -> None:
    safe, pickled = (["adapter_model.safetensors"], ["adapter_model.bin"]) if kind == "adapter" \
        else (["*.safetensors"], list(HUB_PICKLE_PATTERNS))
    names = [p.name for p in path.iterdir() if p.is_file()]
    if _any_match(names, safe + (pickled if allow_pickle else [])):
        return
    where = f"{repo_id}@{commit_sha[:12]}"
    if not allow_pickle and _any_match(_cached_listing(repo_id, commit_sha, cache_dir), pickled):
        raise PickleRefusedError(f"{where} has only pickle weights (.bin/.pt), not safetensors")
    wanted = "adapter_model.safetensors" if kind == "adapter" else "*.safetensors weights"
    raise CheckpointError(f"{where} has no {wanted}",
                          hint=f"check the files of {repo_id} on the Hub, or pin a revision that has them: "
                               f"hf://{repo_id}@REVISION")


def _any_match(names: list[str], patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def _cached_listing(repo_id: str, commit_sha: str, cache_dir: Path | None) -> list[str]:
    """Top-level file names of the tree listing snapshot_download cached, including those it skipped."""
    try:
        from huggingface_hub import get_cached_repo_tree

        listing = get_cached_repo_tree(repo_id, revision=commit_sha, cache_dir=cache_dir)
    except Exception:  # older huggingface_hub, or no cached listing: then we only know "no weights"
        return []
    return [f.path for f in listing if "/" not in f.path]


# -- remote side -----------------------------------------------------------------------------
def _refs(api: HfApi, repo_id: str) -> tuple[dict[str, str], dict[str, str]]:
    refs = api.list_repo_refs(repo_id)
    return ({r.name: r.target_commit for r in refs.tags}, {r.name: r.target_commit for r in refs.branches})


def _remote_files(api: HfApi, repo_id: str, commit_sha: str) -> dict[str, Any]:
    from huggingface_hub.hf_api import RepoFile

    tree = api.list_repo_tree(repo_id, revision=commit_sha, recursive=True)
    return {f.path: f for f in tree if isinstance(f, RepoFile)}


def _same_file(local: _LocalFile, remote: Any) -> bool:
    if remote is None:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    # A regular (non-LFS) file is only known by its git blob id.
    return remote.size == local.size and remote.blob_id == local.git_blob_sha1()


def _same_tree(local: dict[str, _LocalFile], remote: dict[str, Any]) -> bool:
    remote_paths = set(remote) - ({_SEEDED} - set(local))
    return remote_paths == set(local) and all(_same_file(f, remote[p]) for p, f in local.items())


def _lfs_present(api: HfApi, repo_id: str, branch: str, adds: list[Any]) -> set[str]:
    """sha256 of the files the Hub's LFS store already holds (the batch API offers no upload for them)."""
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.lfs import post_lfs_batch_info

    infos = [op.upload_info for op in adds if op.upload_info.size > 0]
    if not infos:
        return set()
    try:
        objects, _, _ = post_lfs_batch_info(upload_infos=infos, token=api.token, repo_type="model",
                                            repo_id=repo_id, revision=quote(branch, safe=""),
                                            endpoint=api.endpoint)
    except (HfHubHTTPError, ValueError):  # only feeds the report; the commit itself decides
        return set()
    return {obj["oid"] for obj in objects if not obj.get("actions")}


# -- settings and errors ---------------------------------------------------------------------
def _check_repo_id(repo_id: str, *, hint: str = "a Hub repo id is ORG/NAME, e.g. acme/llama-merged") -> None:
    if not is_repo_id(repo_id):
        raise HubError(f"not a Hub repo id: {repo_id!r}", hint=hint)


def _check_ref(name: str, *, what: str) -> None:
    if not isinstance(name, str) or not _REF.fullmatch(name) or ".." in name or _COMMIT.fullmatch(name):
        raise HubError(f"not a usable {what} name: {name!r}", hint=f"a {what} is letters, digits and ._-/, e.g. v3")


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _resolve_token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token",
                       hint="log in with `hf auth login` (older: huggingface-cli login) or set HF_TOKEN")
    return token
