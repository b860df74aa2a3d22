"""gc: keeps the blobs of writers that are between their blobs and their rows; cleans what crashes leave."""

from __future__ import annotations

import os
import time


def test_gc_keeps_the_blobs_of_a_writer_between_its_blobs_and_its_rows(reg, llama):
    """A writer's lease protects the blobs it stored before its rows exist; gc does not wait
    for it, and takes the blobs once the lease is gone and no row names them."""
    from lorareg.registry import leases

    reg.add_base(path=llama, name="llama")
    ctx = reg._ctx
    with leases.writing(ctx):
        orphan = ctx.blobs.put_bytes(b"bytes of a version whose rows are not committed yet")
        res = reg.gc()
        assert res.blobs_removed == 0 and ctx.blobs.has(orphan.sha256)
    res = reg.gc()
    assert res.blobs_removed == 1 and not ctx.blobs.has(orphan.sha256)
    assert reg.verify(ref="llama")[0].ok  # referenced blobs are kept


def test_gc_removes_stale_link_folders_and_reports_bytes(reg, llama):
    info = reg.add_base(path=llama, name="llama")
    stale = info.path.parent / ".1.tmp-crashed"
    stale.mkdir()
    (stale / "model.safetensors").symlink_to(info.path / "model.safetensors")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    res = reg.gc()
    assert not stale.exists() and info.path.exists()
    assert res.blobs_removed == 0 and res.bytes_freed == 0


def test_gc_dry_run_reports_what_a_real_run_frees(reg, llama, llama_lora):
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    merged = reg.merge(base="llama", adapters=["chat"], name="m")
    dry = reg.gc(evict=[merged.ref], dry_run=True)
    assert dry.evicted == (merged.ref,) and dry.bytes_freed > 0
    assert reg.get(ref=merged.ref).stored  # nothing changed
    real = reg.gc(evict=[merged.ref])
    assert (real.evicted, real.bytes_freed, real.blobs_removed) == (dry.evicted, dry.bytes_freed, dry.blobs_removed)
    assert not reg.get(ref=merged.ref).stored
    assert reg.gc(evict=[merged.ref]).evicted == ()  # already recipe only
