"""``merge --keep recipe`` hashes the output without writing its shards; the version it records
is the one a files-kept merge of the same recipe records, and rebuilds to the same bytes."""

from __future__ import annotations

import hashlib


def test_recipe_only_records_what_a_kept_merge_records(reg, llama, llama_lora, tmp_path):
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    kept = reg.merge(base="llama", adapters=["chat"], name="kept")
    lean = reg.merge(base="llama", adapters=["chat"], name="lean", keep="recipe")
    assert kept.stored and not lean.stored
    assert (lean.digest, lean.weights_digest) == (kept.digest, kept.weights_digest)
    card = "README.md"  # names the version, so it differs
    assert {k: v for k, v in lean.files.items() if k != card} == {k: v for k, v in kept.files.items() if k != card}
    # export rebuilds it (and checks the digest); the rebuilt files have the recorded hashes
    out = tmp_path / "lean"
    reg.export(ref=lean.ref, dest=out)
    for rel, f in lean.files.items():
        if rel != card:
            assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == f.sha256, rel
