"""Rebuild, recipe-only versions, adapter rollback (rebuild and subtract), alias rollback,
lineage, integrity (issue 5)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lorareg.cli.main import cli
from lorareg.errors import LoraregError


@pytest.fixture(scope="session")
def bf16_family(models_dir):
    """A bf16 base (where rounding is visible) and three float32 adapters of different ranks."""
    from tests.support.factories import make_llama, make_lora

    base = make_llama(models_dir / "llama-bf16", dtype=torch.bfloat16, seed=4)
    adapters = {n: make_lora(base, models_dir / f"roll-{n}", seed=20 + i, r=2 + i, lora_alpha=8)
                for i, n in enumerate(("a", "b", "c"))}
    return base, adapters


@pytest.fixture
def three(reg, bf16_family):
    base, adapters = bf16_family
    reg.add_base(path=base, name="llama")
    for n, path in adapters.items():
        reg.add_adapter(path=path, base="llama", name=n)
    return reg


def _tensors(folder):
    out = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("method,density", [("linear", None), ("ties", 0.5), ("dare_linear", 0.6),
                                            ("dare_ties", 0.6), ("magnitude_prune", 0.5)])
def test_rebuild_matches_digest_for_every_method(three, method, density):
    info = three.merge(base="llama", adapters=["a", "b:0.5"], name=f"m-{method.replace('_', '-')}",
                       method=method, params={"density": density} if density is not None else None)
    res = three.rebuild(ref=info.ref)
    assert res.ok and res.rebuilt_digest == info.digest


def test_keep_recipe_and_gc_evict(three, tmp_path):
    kept = three.merge(base="llama", adapters=["a"], name="lean", keep="recipe")
    assert not kept.stored and kept.path is None
    assert three.rebuild(ref=kept.ref).ok
    full = three.merge(base="llama", adapters=["b"], name="full")
    res = three.gc(evict=[full.ref])
    assert full.ref in res.evicted and res.bytes_freed > 0
    assert not three.get(ref=full.ref).stored
    # export rebuilds first, checks the digest, then writes
    three.export(ref=full.ref, dest=tmp_path / "out")
    assert "model.safetensors" in os.listdir(tmp_path / "out")
    assert not three.get(ref=full.ref).stored  # export rebuilt into scratch; the version stays recipe only
    assert three.rebuild(ref=full.ref).ok
    assert three.materialize(ref=kept.ref).stored


def test_rollback_middle_adapter_equals_fresh_two_adapter_merge(three):
    two = three.merge(base="llama", adapters=["a:1.0", "c:0.3"], name="mix")
    three_ = three.merge(base="llama", adapters=["a:1.0", "b:0.5", "c:0.3"], name="mix")
    rolled = three.rollback_adapter(ref=three_.ref, adapter="b", message="b regressed")
    assert rolled.ref == "mix@3" and rolled.digest == two.digest
    assert rolled.details["parent"] == three_.ref
    # subtract: from the merged weights alone, within one ulp of the exact result
    sub = three.rollback_adapter(ref=three_.ref, adapter="b", strategy="subtract")
    dev = sub.details["outcome"]["subtract_deviation"]
    assert dev["measured"] and dev["max_ulp_of_merged"] <= 1.0
    from lorareg.merge.compare import deviation_in_source_ulps

    assert deviation_in_source_ulps(three.get(ref=two.ref).path, sub.path, three.get(ref=three_.ref).path) <= 1.0
    assert three.rebuild(ref=sub.ref).ok  # a subtract version is rebuildable too


def test_rollback_of_the_only_adapter_is_refused(three):
    # What is left would be the base itself, already registered: refused, nothing registered
    # (issue 14; it used to register a copy of the base summarised as "linear llama@1 +").
    one = three.merge(base="llama", adapters=["a"], name="solo")
    for strategy in ("rebuild", "subtract"):
        with pytest.raises(LoraregError, match="only|one adapter") as exc:
            three.rollback_adapter(ref=one.ref, adapter="a", strategy=strategy)
        assert "llama@1" in str(exc.value) and "already registered" in str(exc.value)
    assert [i.ref for i in three.ls(name="solo")] == ["solo@1"]


def test_rollback_message_adds_to_the_automatic_note(three):
    two = three.merge(base="llama", adapters=["a", "b"], name="noted")
    rolled = three.rollback_adapter(ref=two.ref, adapter="b", message="b regressed")
    assert rolled.message == "rollback: removed b@1; b regressed"
    assert three.get(ref=rolled.ref).message == rolled.message
    assert three.log(ref="noted")[0].action == "rollback"


def test_subtract_refused_for_ties(three):
    info = three.merge(base="llama", adapters=["a", "b"], name="t", method="ties", params={"density": 0.5})
    with pytest.raises(LoraregError, match="linear"):
        three.rollback_adapter(ref=info.ref, adapter="a", strategy="subtract")


def test_alias_rollback_and_log(three):
    three.merge(base="llama", adapters=["a"], name="svc")
    three.merge(base="llama", adapters=["b"], name="svc")
    three.set_alias(name="svc", alias="current", version=2)
    assert three.get(ref="svc").version == 2
    three.rollback_alias(name="svc", to=1)
    assert three.get(ref="svc").version == 1
    actions = [(e.action, e.ref) for e in three.log(ref="svc")]
    assert actions[0] == ("rollback", "svc@current")
    moves = three.alias_history(name="svc", alias="current")
    assert [a.version for a in moves] == [2, 1]
    # what was live just after the first move, and now
    assert [a.version for a in three.alias_history(name="svc", at=moves[0].updated_at)] == [2]
    assert [a.version for a in three.alias_history(name="svc", at=moves[1].updated_at)] == [1]
    r = CliRunner().invoke(cli, ["alias", "history", "svc", "--json"])
    assert r.exit_code == 0 and [a["version"] for a in json.loads(r.output)] == [2, 1]


def test_corrupted_blob_is_reported_with_affected_versions(three):
    info = three.merge(base="llama", adapters=["a"], name="v")
    sha = next(f.sha256 for path, f in info.files.items() if path.endswith(".safetensors"))
    blob = three.location().blobs / "sha256" / sha[:2] / sha[2:]
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    results = three.verify(all_versions=True)
    bad = [r for r in results if not r.ok]
    assert any(r.ref == info.ref for r in bad)


def test_lineage_json_three_generations(three):
    g1 = three.merge(base="llama", adapters=["a", "b", "c"], name="fam")
    g2 = three.rollback_adapter(ref=g1.ref, adapter="c")
    g3 = three.rollback_adapter(ref=g2.ref, adapter="b")
    r = CliRunner().invoke(cli, ["lineage", g3.ref, "--json"])
    assert r.exit_code == 0, r.output
    graph = json.loads(r.output)
    edges = {(e["src"], e["dst"], e["role"]) for e in graph["edges"]}
    assert (g3.ref, g2.ref, "parent") in edges and (g2.ref, g1.ref, "parent") in edges
    assert (g1.ref, "llama@1", "base") in edges and (g1.ref, "b@1", "adapter") in edges
    down = three.lineage(ref="a@1", down=True)
    assert {n.ref for n in down.nodes} >= {g1.ref, g2.ref}
    text = CliRunner().invoke(cli, ["lineage", g1.ref]).output
    assert "llama@1" in text and "adapter" in text
    d = three.diff(a=g1.ref, b=g2.ref)
    assert "adapters" in [c.field for c in d.recipe] and d.tensors


def test_rebuild_mismatch_reports_tensors_and_exits_1(three):
    """A recipe that no longer produces the recorded bytes is an error naming what differs."""
    import sqlite3

    info = three.merge(base="llama", adapters=["a", "b:0.5"], name="drifted")
    con = sqlite3.connect(three.location().home / "registry.db")
    recipe = json.loads(con.execute("SELECT recipe_json FROM merges").fetchone()[0])
    recipe["adapters"][1]["weight"] = 0.25  # as if the arithmetic had changed under the same recipe
    recipe["versions"]["torch"] = "0.0.1"
    con.execute("UPDATE merges SET recipe_json=?", (json.dumps(recipe),))
    con.commit()
    con.close()
    res = three.rebuild(ref=info.ref)
    assert not res.ok and res.tensors and res.tensors[0].elements_differing > 0
    assert res.tensors[0].max_abs > 0 and res.tensors[0].max_ulp >= 1
    assert res.library_changes["torch"]["recorded"] == "0.0.1"
    r = CliRunner().invoke(cli, ["rebuild", info.ref])
    assert r.exit_code == 1 and "Error: rebuild of drifted@1 does not match" in r.output
    assert "torch: recorded 0.0.1" in r.output
