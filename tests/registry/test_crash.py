"""A run killed (SIGKILL) at any point leaves nothing that the next command does not remove,
no row without its bytes, and never touches the temp files of a writer that is still alive.

Each trial runs one operation in a child process that slows itself down (a sleep in its
progress callback, so random kill points fall inside the work, not in `import torch`), kills
it at a seeded random moment, then opens the registry once more (what any next command does)
and checks: no temp file anywhere in the home or the blob store, `verify --all` clean, and
every version's files present."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorareg import Registry
from tests.support import killed_writer
from tests.support.hub_state import ALICE

SEED = 20261130
CHILD = str(Path(killed_writer.__file__))  # the writer the kills land in


def _start(op: dict, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, CHILD, json.dumps(op)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def _leftovers(home: Path) -> list[str]:
    """Temp files and folders anywhere a writer puts them (run folders, link folders in the
    making), but this test process's own run folders: it is alive."""
    from lorareg.store import scratch

    mine = {r.path.name for r in scratch._RUNS.values() if r._path is not None}
    mine |= {f".{name}.lock" for name in mine}
    found = [p for p in (home / "tmp").iterdir()] if (home / "tmp").exists() else []
    found += [p for p in (home / "blobs" / "tmp").iterdir()] if (home / "blobs" / "tmp").exists() else []
    found += list((home / "versions").glob("*/.*")) if (home / "versions").exists() else []
    return sorted(str(p.relative_to(home)) for p in found if p.name not in mine)


def _check_clean(home: Path) -> None:
    with Registry.open(home=home) as reg:  # the next command: sweeps what dead runs left
        assert _leftovers(home) == []
        assert all(r.ok for r in reg.verify(all_versions=True))
        for info in reg.ls():
            if info.stored:
                assert reg.folder(ref=info.ref).is_dir()  # no row without its bytes


@pytest.fixture
def prepared(reg, llama, llama_lora, lorareg_home):
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.merge(base="llama", adapters=["chat:0.9"], name="kept", keep="recipe")
    return lorareg_home


def test_kill_at_random_points_leaves_nothing_behind(prepared, llama, llama_lora, hub, tmp_path, capsys):
    rng = random.Random(SEED)
    env = {**os.environ, "HF_TOKEN": ALICE, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1"}
    ops = ["add_base", "add_adapter", "merge", "merge", "rebuild", "export", "push"] * 3
    trials = []
    for i, name in enumerate(ops[:21]):
        op = {"op": name, "name": f"x{i}", "path": str(llama if name == "add_base" else llama_lora),
              "weight": round(0.1 + i / 100, 3), "dest": str(tmp_path / f"export-{i}"),
              "keep": "recipe" if i % 4 == 3 else "files"}
        delay = rng.uniform(0.0, 0.6)
        proc = _start(op, env)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        trials.append((name, round(delay, 3), proc.returncode))
        _check_clean(prepared)
        if name == "rebuild":  # put the recipe-only version back for the next trials
            with Registry.open(home=prepared) as reg:
                if reg.get(ref="kept@1").stored:
                    reg.gc(evict=["kept@1"])
    with capsys.disabled():
        print(f"\ncrash trials (seed {SEED}): " + ", ".join(f"{n}@{d}s" for n, d, _ in trials))
    assert len(trials) >= 20
    assert sum(rc == -signal.SIGKILL for _, _, rc in trials) >= 15  # killed mid-way, not after the fact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half export either


def test_a_live_writer_is_untouched_while_a_killed_one_is_swept(prepared, llama_lora):
    env = dict(os.environ)
    alive = _start({"op": "merge", "weight": 0.31, "pause": 0.15}, env)
    doomed = _start({"op": "add_adapter", "name": "doomed", "path": str(llama_lora), "pause": 0.5}, env)
    for p in (alive, doomed):
        p.stdin.write("go\n")
        p.stdin.flush()
    time.sleep(1.0)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    runs_before = sorted((prepared / "tmp").glob("run-*"))
    with Registry.open(home=prepared):  # sweeps the dead run, not the live one
        runs_after = sorted((prepared / "tmp").glob("run-*"))
    assert alive.poll() is None, "the live writer finished too early for this test to mean anything"
    assert runs_after and set(runs_after) <= set(runs_before)
    out, err = alive.communicate(timeout=120)
    assert alive.returncode == 0 and out.strip().endswith("done"), err
    _check_clean(prepared)
    with Registry.open(home=prepared) as reg:
        assert [v.ref for v in reg.ls(name="m")] == ["m@1"]
        assert reg.count(name="doomed") == 0
