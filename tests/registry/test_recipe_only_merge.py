"""``merge --keep recipe`` hashes the output's tensors without writing its shards; the version it
records is the one a files-kept merge of the same recipe records (its shards without a sha256 of
their own: no blob of theirs is kept), and rebuilds to the same bytes."""

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
    shard = "model.safetensors"
    assert lean.files[shard].sha256 is None and lean.files[shard].size == kept.files[shard].size
    assert ({k: v for k, v in lean.files.items() if k not in (card, shard)}
            == {k: v for k, v in kept.files.items() if k not in (card, shard)})
    # export rebuilds it (and checks the digest): the kept merge's bytes, shard included
    out = tmp_path / "lean"
    reg.export(ref=lean.ref, dest=out)
    for rel, f in kept.files.items():
        if rel != card:
            assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == f.sha256, rel
    # given its files back, the version records the shard's sha256 (and shows it)
    reg.rebuild(ref=lean.ref, keep_files=True)
    assert reg.get(ref=lean.ref).files[shard] == kept.files[shard]


def test_show_says_a_recipe_only_shard_has_no_sha256(reg, llama, llama_lora):
    import json

    from click.testing import CliRunner

    from lorareg.cli.main import cli

    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.merge(base="llama", adapters=["chat"], name="lean", keep="recipe")
    shown = CliRunner().invoke(cli, ["show", "lean"])
    assert shown.exit_code == 0, shown.output
    assert [line.split()[-2:] for line in shown.output.splitlines() if "model.safetensors" in line] == \
        [["(not", "kept)"]]
    as_json = CliRunner().invoke(cli, ["--json", "show", "lean"])
    assert json.loads(as_json.output)["files"]["model.safetensors"]["sha256"] is None
