"""Small helpers shared by the Hub tests: checkpoint-shaped folders, a push with a card, and
the one-line error check."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lorareg.errors import HubError
from lorareg.registry.hub_client import push_folder

from .hub_state import ALICE, BOB

SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def checkpoint_folder(path: Path, *, seed: int = 0, extra: dict[str, bytes] | None = None) -> Path:
    """A checkpoint-shaped folder: a config and three LFS-tracked shards of seeded bytes."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    for name in SHARDS:
        (path / name).write_bytes(rng.randbytes(4096))
    for name, data in (extra or {}).items():
        (path / name).write_bytes(data)
    return path


def push(folder: Path, *, tag: str = "v1", repo_id: str = "alice/merged", token: str | None = ALICE, **kw):
    return push_folder(folder=folder, repo_id=repo_id, tag=tag, token=token,
                       commit_message=f"lorareg: merged {tag}", card=f"---\ntags: [lorareg]\n---\n# {tag}\n", **kw)


def local_bytes(folder: Path, tag: str) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files["README.md"] = f"---\ntags: [lorareg]\n---\n# {tag}\n".encode()
    return files


def assert_one_line(err: pytest.ExceptionInfo) -> HubError:
    e = err.value
    assert isinstance(e, HubError)
    assert e.message and "\n" not in e.message
    assert e.hint and "\n" not in e.hint
    assert ALICE not in e.message + e.hint and BOB not in e.message + e.hint
    return e
