"""Merges through the registry: recipes recorded, identical recipes deduplicated, export loads
with plain transformers, the CLI merge command."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lorareg.cli.main import cli
from lorareg.errors import IncompatibleAdapterError, LoraregError


def _peft_merged(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


def test_merge_records_recipe_and_matches_peft(seeded, llama, llama_lora, tmp_path):
    info = seeded.merge(base="llama", adapters=["chat"], name="assistant")
    assert info.ref == "assistant@1" and info.kind == "merge" and info.stored
    recipe = info.details["recipe"]
    assert recipe["base"]["ref"] == "llama@1" and recipe["adapters"][0]["ref"] == "chat@1"
    assert recipe["adapters"][0]["weight"] == 1.0 and recipe["method"] == "linear"
    assert recipe["dtype"] == "float32" and set(recipe["versions"]) >= {"torch", "peft", "safetensors"}
    assert recipe["adapters"][0]["digest"] == seeded.get(ref="chat").digest
    out = tmp_path / "export"
    seeded.export(ref=info.ref, dest=out)
    ours = {}
    for f in out.glob("*.safetensors"):
        ours.update(load_file(f))
    theirs = _peft_merged(llama, llama_lora)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k
    card = (out / "README.md").read_text()
    assert "base_model_relation: merge" in card and "lorareg" in card


def test_identical_recipe_returns_existing_version(seeded):
    a = seeded.merge(base="llama", adapters=["chat", ("code", 0.5)], name="assistant")
    b = seeded.merge(base="llama", adapters=["chat:1.0", "code:0.5"], name="assistant")
    assert b.existed and b.ref == a.ref
    c = seeded.merge(base="llama", adapters=["chat", "code:0.25"], name="assistant")
    assert c.ref == "assistant@2" and c.digest != a.digest


def test_random_method_records_chosen_seed(seeded):
    info = seeded.merge(base="llama", adapters=["chat", "code"], name="mix", method="dare_linear", params={"density": 0.5})
    seed = info.details["recipe"]["seed"]
    assert isinstance(seed, int)
    again = seeded.merge(base="llama", adapters=["chat", "code"], name="mix", method="dare_linear", params={"density": 0.5},
                         seed=seed)
    assert again.existed and again.digest == info.digest


def test_adapter_of_another_base_is_refused(seeded, tmp_path):
    from tests.support.factories import make_llama

    seeded.add_base(path=make_llama(tmp_path / "other", seed=11), name="other")
    with pytest.raises(IncompatibleAdapterError) as exc:
        seeded.merge(base="other", adapters=["chat"], name="x")
    assert "--allow-base-mismatch" in exc.value.hint
    info = seeded.merge(base="other", adapters=["chat"], name="x", allow_base_mismatch=True)
    assert info.details["recipe"]["allow_base_mismatch"] is True


def test_bad_merge_requests(seeded):
    with pytest.raises(LoraregError):
        seeded.merge(base="llama", adapters=["chat:abc"], name="x")
    with pytest.raises(LoraregError):
        seeded.merge(base="chat", adapters=["chat"], name="x")  # an adapter is not a base
    with pytest.raises(LoraregError):
        seeded.merge(base="llama", adapters=["chat", "code"], name="x", method="ties")  # density missing
    assert seeded.ls(kind="merge") == []


def test_as_adapter_cat_is_registered(seeded):
    info = seeded.merge(base="llama", adapters=["chat", "code:0.5"], name="combo", as_adapter="cat")
    assert info.kind == "merge" and (info.path / "adapter_config.json").exists()
    cfg = json.loads((info.path / "adapter_config.json").read_text())
    # modules both adapters target get rank 4 + 2; the rest keep 4 (per-module rank_pattern)
    assert max([cfg["r"], *cfg.get("rank_pattern", {}).values()]) == 4 + 2


def test_cli_merge_and_show(seeded):
    runner = CliRunner()
    r = runner.invoke(cli, ["merge", "llama", "chat:0.7", "code:-0.3", "--name", "neg", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["ref"] == "neg@1" and out["details"]["recipe"]["adapters"][1]["weight"] == -0.3
    shown = runner.invoke(cli, ["show", "neg"])
    assert shown.exit_code == 0 and "chat@1" in shown.output and "linear" in shown.output


def test_cli_export_rebuild_diff_gc(seeded, tmp_path):
    runner = CliRunner()

    def ok(*args):
        r = runner.invoke(cli, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r.stdout

    ok("merge", "llama", "chat", "--name", "pair")
    ok("merge", "llama", "chat", "code:0.5", "--name", "pair", "--keep", "recipe")
    listed = {i["ref"]: i["stored"] for i in json.loads(ok("ls", "merges", "--json"))}
    assert listed == {"pair@1": True, "pair@2": False}
    assert json.loads(ok("rebuild", "pair@2", "--json"))["ok"] is True
    ok("export", "pair@2", tmp_path / "out")
    assert (tmp_path / "out" / "config.json").exists()
    d = json.loads(ok("diff", "pair@1", "pair@2", "--json"))
    assert d["same_digest"] is False and "adapters" in [c["field"] for c in d["recipe"]]
    freed = json.loads(ok("gc", "--evict", "pair@1", "--json"))
    assert freed["evicted"] == ["pair@1"] and freed["bytes_freed"] > 0
    assert "(recipe only)" in ok("lineage", "pair@1")
    text = ok("ls", "merges")
    assert "recipe" in text


def test_concurrent_merges_under_one_name_get_cards_with_their_own_numbers(seeded):
    """Four processes merge different recipes under one name at once: versions 1-4, and each
    version's model card names the number its row got (decided once, when the row is written)."""
    import subprocess
    import sys

    from huggingface_hub import ModelCard

    from lorareg import Registry

    code = ("import sys; from lorareg import Registry; "
            "Registry.open().merge(base='llama', adapters=[f'chat:{sys.argv[1]}'], name='race')")
    procs = [subprocess.Popen([sys.executable, "-c", code, w], stderr=subprocess.PIPE, text=True)
             for w in ("0.1", "0.2", "0.3", "0.4")]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    assert not errors, errors
    with Registry.open() as reg:
        versions = reg.ls(name="race")
        assert sorted(v.version for v in versions) == [1, 2, 3, 4]
        weights = set()
        for v in versions:
            card = ModelCard.load(v.path / "README.md")
            assert card.data.to_dict()["lorareg"]["version"] == v.version
            assert card.text.lstrip().startswith(f"# race v{v.version}")
            assert card.data.to_dict()["lorareg"]["digest"] == v.digest
            weights.add(reg.get(ref=v.ref).details["recipe"]["adapters"][0]["weight"])
        assert weights == {0.1, 0.2, 0.3, 0.4}
