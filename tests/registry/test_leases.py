"""Writers and gc coordinated in the database (registry/leases.py): a writer's lease keeps the
blobs it stored before its rows; a lapsed lease's blobs go, and its writer commits nothing.

Writers that die or stall run as child processes, stopped by the test at one point: after
their blobs are stored and before their rows' transaction (``BlobStore.flush``, patched in
the child only).  Each case runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import select

LEASE_S = 2.0

# A writer that adds a base and, at the point between its blobs and its rows, writes MARKER
# then kills itself (kill), stops itself (stop; the test continues it with SIGCONT) or goes on.
CHILD = r"""
import os, signal, sys
mode, folder, name, marker = sys.argv[1:5]
from lorareg.store.blobs import BlobStore
def between_blobs_and_rows(self):
    open(marker, "w").close()
    if mode != "go":
        os.kill(os.getpid(), signal.SIGKILL if mode == "kill" else signal.SIGSTOP)
BlobStore.flush = between_blobs_and_rows
from lorareg import Registry
from lorareg.errors import LoraregError
with Registry.open() as reg:
    try:
        print(reg.add_base(path=folder, name=name).ref)
    except LoraregError as exc:
        print(f"{type(exc).__name__}: {exc} | {exc.hint}")
        sys.exit(3)
"""

# Adds and removes bases over and over (gc runs inside every rm), sharing content across names.
WRITER = r"""
import sys
from lorareg import Registry
w, folders = int(sys.argv[1]), sys.argv[2:]
with Registry.open() as reg:
    for i in range(6):
        info = reg.add_base(path=folders[(w + i) % len(folders)], name=f"w{w}")
        print("add", info.ref)
        if i % 2 == 1:
            reg.remove(refs=[info.ref])
            print("rm", info.ref)
"""

COLLECTOR = r"""
import os, sys, time
from lorareg import Registry
stop, runs = sys.argv[1], 0
with Registry.open() as reg:
    while not os.path.exists(stop) or runs < 3:
        reg.gc()
        runs += 1
        time.sleep(0.02)
print(runs)
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request, monkeypatch) -> str:
    """The registry's database for this test; children inherit it through the environment."""
    monkeypatch.setenv("LORAREG_LEASE_SECONDS", str(LEASE_S))
    if request.param == "postgres":
        monkeypatch.setenv("LORAREG_DATABASE_URL", request.getfixturevalue("pg_url"))
    return request.param


@pytest.fixture
def registry(database):
    from lorareg import Registry

    with Registry.open() as reg:
        yield reg


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> list[Path]:
    from tests.support.factories import make_llama

    root = tmp_path_factory.mktemp("lease-models")
    return [make_llama(root / f"m{i}", seed=40 + i, layers=1) for i in range(3)]


def _rows(reg, model):
    from lorareg.registry import models as m

    with reg._ctx.session() as session:
        return session.exec(select(model)).all()


def _stored(reg) -> set[str]:
    return {h for h, _ in reg._ctx.blobs.iter_blobs()}


def _writer(mode: str, folder: Path, name: str, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / f"{name}.between"
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(folder), name, str(marker)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return child, marker


def _wait_stopped(child: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if marker.exists() and Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] == "T":
            return
        assert child.poll() is None, child.communicate()[0]
        time.sleep(0.05)
    raise AssertionError("the writer never reached the point between its blobs and its rows")


def _sleep_past_expiry(reg) -> None:
    from lorareg.registry import models as m

    (lease,) = _rows(reg, m.Lease)
    expires = lease.expires_at.timestamp()
    time.sleep(max(0.0, expires - time.time()) + 0.3)


def _all_blobs_present(reg) -> None:
    """Every committed row's blob (files of stored versions, manifests) is in the store, intact."""
    from lorareg.registry.gc import referenced_blobs

    with reg._ctx.session() as session:
        assert referenced_blobs(session) <= _stored(reg)
    results = reg.verify(all_versions=True)
    assert all(r.ok for r in results), [r for r in results if not r.ok]


# (a) ---------------------------------------------------------------------------------------

def test_a_blob_claimed_by_a_live_lease_survives_gc(registry, monkeypatch):
    """Both ways a writer relies on a blob are claimed: a new blob, and an existing orphan
    copy it reuses.  The heartbeat keeps the lease live past its length; gc keeps both blobs
    until the lease ends, then takes them."""
    from lorareg.registry import leases
    from lorareg.registry import models as m

    ctx = registry._ctx
    orphan = ctx.blobs.put_bytes(b"left by a version that was removed")  # no lease: nothing protects it
    with leases.writing(ctx) as lease:
        with leases.writing(ctx) as again:  # nested: the same lease
            assert again is lease
        new = ctx.blobs.put_bytes(b"a writer's new blob")
        reused = ctx.blobs.put_bytes(b"left by a version that was removed")  # reuses the orphan: claimed
        assert reused.sha256 == orphan.sha256
        assert {p.sha256 for p in _rows(registry, m.PendingBlob)} == {new.sha256, orphan.sha256}
        time.sleep(LEASE_S * 1.5)  # longer than the lease: only the heartbeat keeps it live
        res = registry.gc()
        assert (res.blobs_removed, res.leases_expired) == (0, 0)
        assert ctx.blobs.has(new.sha256) and ctx.blobs.has(orphan.sha256)
    assert _rows(registry, m.Lease) == [] and _rows(registry, m.PendingBlob) == []
    assert ctx.blobs.claim is None  # the store's hook is restored
    assert registry.gc().blobs_removed == 2 and _stored(registry) == set()


# (b) ---------------------------------------------------------------------------------------

def test_a_killed_writers_blobs_are_kept_while_its_lease_lives_then_collected(registry, small_models,
                                                                             tmp_path):
    from lorareg.registry import models as m

    child, marker = _writer("kill", small_models[0], "killed", tmp_path)
    assert child.wait(60) == -signal.SIGKILL, child.communicate()[0]
    assert marker.exists()
    left = _stored(registry)
    assert left and registry.ls() == [] and _rows(registry, m.Version) == []  # blobs, no rows
    assert {p.sha256 for p in _rows(registry, m.PendingBlob)} == left  # every blob it stored is claimed

    res = registry.gc()  # the lease is live: the orphans stay
    assert (res.blobs_removed, res.leases_expired) == (0, 0) and _stored(registry) == left

    _sleep_past_expiry(registry)
    dry = registry.gc(dry_run=True)
    assert (dry.blobs_removed, dry.leases_expired) == (len(left), 1) and _stored(registry) == left
    res = registry.gc()
    assert (res.blobs_removed, res.leases_expired) == (len(left), 1)
    assert _stored(registry) == set() and _rows(registry, m.Lease) == [] and _rows(registry, m.PendingBlob) == []
    assert sorted(e.args["leases_expired"] for e in registry.log() if e.action == "gc") == [0, 1]  # in the log too

    info = registry.add_base(path=small_models[0], name="killed")  # nothing stands in the way
    assert info.ref == "killed@1" and not info.existed
    _all_blobs_present(registry)


# (c) ---------------------------------------------------------------------------------------

def test_a_writer_whose_lease_lapsed_while_paused_registers_nothing(registry, small_models, tmp_path):
    from lorareg.registry import models as m

    child, marker = _writer("stop", small_models[1], "paused", tmp_path)
    try:
        _wait_stopped(child, marker)
        left = _stored(registry)
        _sleep_past_expiry(registry)
        res = registry.gc()  # the paused writer's lease lapsed: its blobs go
        assert (res.blobs_removed, res.leases_expired) == (len(left), 1) and _stored(registry) == set()
    finally:
        child.send_signal(signal.SIGCONT)
    out = child.communicate(timeout=60)[0]
    assert child.returncode == 3, out
    assert out.strip() == ("LeaseLostError: the writer's lease expired before its rows were committed | nothing "
                           "was registered; run the command again (LORAREG_LEASE_SECONDS sets the lease length)")
    assert registry.ls() == [] and _rows(registry, m.Version) == [] and _rows(registry, m.Lease) == []

    retry, marker = _writer("go", small_models[1], "paused", tmp_path)
    out = retry.communicate(timeout=60)[0]
    assert retry.returncode == 0 and out.strip() == "paused@1", out
    _all_blobs_present(registry)
    assert registry.gc().blobs_removed == 0


def test_a_lapsed_lease_is_never_renewed(registry, monkeypatch):
    """Without its heartbeat (its process stalled) a lease lapses even if no gc ran: its next
    claim and its rows transaction both refuse, so no writer trusts blobs a gc may have judged
    orphans."""
    from lorareg.errors import LeaseLostError
    from lorareg.registry import db, leases

    monkeypatch.setattr(leases, "_heartbeat", lambda lease, stop: None)
    ctx = registry._ctx
    with leases.writing(ctx) as lease:
        ctx.blobs.put_bytes(b"before the stall")
        time.sleep(LEASE_S + 0.3)
        with pytest.raises(LeaseLostError):
            ctx.blobs.put_bytes(b"after the stall")
        with db.writer_session(ctx.db, "x") as session, pytest.raises(LeaseLostError):
            leases.assert_held(session, ctx)
        assert lease.lost.is_set()


def test_lease_length_comes_from_the_environment(monkeypatch):
    from lorareg.errors import LoraregError
    from lorareg.registry import leases

    monkeypatch.delenv("LORAREG_LEASE_SECONDS", raising=False)
    assert leases.lease_seconds() == 600
    monkeypatch.setenv("LORAREG_LEASE_SECONDS", "2.5")
    assert leases.lease_seconds() == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv("LORAREG_LEASE_SECONDS", bad)
        with pytest.raises(LoraregError, match="LORAREG_LEASE_SECONDS must be a positive number"):
            leases.lease_seconds()


def test_a_bad_lease_length_is_one_line_and_writes_nothing(tmp_path, llama, monkeypatch):
    from lorareg import Registry
    from tests.support.cli import run

    monkeypatch.setenv("LORAREG_LEASE_SECONDS", "ten")
    result = run("add", "base", llama, "--name", "llama", ok=False)
    assert result.exit_code == 1
    assert "Error: LORAREG_LEASE_SECONDS must be a positive number of seconds, not 'ten'" in result.output
    assert "Traceback" not in result.output
    monkeypatch.delenv("LORAREG_LEASE_SECONDS")
    with Registry.open() as reg:
        assert reg.ls() == [] and _stored(reg) == set()


# (d) ---------------------------------------------------------------------------------------

def test_concurrent_writers_and_collectors_never_lose_a_blob(registry, small_models, tmp_path, monkeypatch):
    """Three writers add and remove bases sharing content (so a writer often reuses a blob
    that a removal just left orphaned) while a fourth process runs gc in a loop.  The lease is
    longer here: on two shared cores SQLite's lock polling can keep a heartbeat waiting for
    seconds behind a gc loop, and this case is about races, not expiry."""
    monkeypatch.setenv("LORAREG_LEASE_SECONDS", "30")
    stop = tmp_path / "stop"
    folders = [str(f) for f in small_models]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(w), *folders], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for w in range(3)]
    collector = subprocess.Popen([sys.executable, "-c", COLLECTOR, str(stop)], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    try:
        outs = [w.communicate(timeout=240)[0] for w in writers]
    finally:
        stop.touch()
    runs = collector.communicate(timeout=120)[0]
    assert all(w.returncode == 0 for w in writers), outs
    assert collector.returncode == 0 and int(runs.split()[-1]) >= 3, runs
    said = [line.split() for out in outs for line in out.splitlines() if line.startswith(("add ", "rm "))]
    expected = {ref for verb, ref in said if verb == "add"} - {ref for verb, ref in said if verb == "rm"}
    assert expected and {v.ref for v in registry.ls()} == expected
    _all_blobs_present(registry)
    res = registry.gc()
    assert res.leases_expired == 0 and _rows_empty(registry)
    _all_blobs_present(registry)


def _rows_empty(reg) -> bool:
    from lorareg.registry import models as m

    return _rows(reg, m.Lease) == [] and _rows(reg, m.PendingBlob) == []
