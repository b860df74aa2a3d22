"""A registry written before recipes had a schema and before digests covered the whole model
(alembic 0001, lorareg at commit 4942657) opens with this lorareg and works unchanged: same
versions; each old digest is kept as the weights digest and the whole-model digest computed
from the stored bytes; every merge rebuilds; identical requests find the recorded merges;
recipe-only versions come back.

The registry is data/registry-0001.tar.gz, made by data/make_registry_0001.py."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from lorareg import Registry
from lorareg.registry.recipe import Recipe

DATA = Path(__file__).parent / "data" / "registry-0001.tar.gz"


@pytest.fixture
def legacy(tmp_path) -> tuple[Path, dict]:
    with tarfile.open(DATA) as tar:
        tar.extractall(tmp_path, filter="tar")
    return tmp_path / "home", json.loads((tmp_path / "expected.json").read_text())


def test_every_version_keeps_its_digests_and_files(legacy):
    home, expected = legacy
    with Registry.open(home=home) as reg:
        infos = {i.ref: reg.get(ref=i.ref) for i in reg.ls()}
        assert set(infos) == set(expected)
        for ref, want in expected.items():
            info = infos[ref]
            assert (info.weights_digest, info.stored) == (want["digest"], want["stored"]), ref
            assert {path: f.sha256 for path, f in info.files.items()} == want["files"], ref
            if info.stored:  # the whole-model digest, from the stored config and tokenizer files
                assert info.digest_state is None and info.digest != want["digest"], ref
                assert info.digest == reg.rebuild(ref=ref).rebuilt_digest if info.kind == "merge" else True
            else:  # kept as recipe only: nothing to read, compared by weights when rebuilt
                assert info.digest_state == "pending" and info.digest == want["digest"], ref
            if info.kind == "merge":
                recipe = info.details["recipe"]
                assert recipe["schema"] == 2 and recipe["base"]["digest"] == infos["tiny@1"].digest
                # inputs renamed by their new digests, so the recipe digest was recomputed
                assert info.details["recipe_digest"] == Recipe.from_json(recipe).digest() != want["recipe_digest"]
        assert all(r.ok for r in reg.verify(all_versions=True))


def test_the_schema_2_layout_alone_kept_recipe_digests(legacy):
    """Revision 0002 changed the layout of recipes, not their identity: with the inputs' old
    digests put back, each recipe gives the digest recorded under the old layout."""
    home, expected = legacy
    with Registry.open(home=home) as reg:
        old = {ref: want["digest"] for ref, want in expected.items()}
        for ref, want in expected.items():
            if want["kind"] != "merge":
                continue
            recipe = dict(reg.get(ref=ref).details["recipe"])
            recipe["base"] = {**recipe["base"], "digest": old[recipe["base"]["ref"]]}
            recipe["adapters"] = [{**a, "digest": old[a["ref"]]} for a in recipe["adapters"]]
            if recipe["subtracted"]:
                recipe["subtracted"] = {k: {**v, "digest": old[v["ref"]]} for k, v in recipe["subtracted"].items()}
            assert Recipe.from_json(recipe).digest() == want["recipe_digest"], ref


def test_converted_recipes_keep_parameters_and_outcome(legacy):
    home, _ = legacy
    with Registry.open(home=home) as reg:
        dare = reg.get(ref="assistant@2").details
        assert dare["recipe"]["params"] == {"density": 0.5, "majority_sign_method": "total"}
        assert dare["recipe"]["seed"] == 7 and dare["outcome"]["tensors_changed"] == 14
        assert reg.get(ref="assistant@1").details["recipe"]["params"] == {}
        assert reg.get(ref="pruned@1").details["recipe"]["params"] == {"density": 0.3,
                                                                      "majority_sign_method": "frequency"}
        sub = reg.get(ref="assistant@4").details
        assert sub["recipe"]["subtracted"]["source"]["ref"] == "assistant@1"
        assert sub["recipe"]["subtracted"]["removed"]["ref"] == "chat@1"
        assert sub["outcome"]["subtract_deviation"]["measured"] is True
        assert reg.get(ref="combo@1").details["outcome"]["output_rank"] >= 4


def test_every_merge_rebuilds_to_its_recorded_digest(legacy):
    home, expected = legacy
    with Registry.open(home=home) as reg:
        for ref, want in expected.items():
            if want["kind"] == "merge":
                assert reg.rebuild(ref=ref).ok, ref


def test_identical_requests_find_the_recorded_merges(legacy):
    home, _ = legacy
    with Registry.open(home=home) as reg:
        again = reg.merge(base="tiny", adapters=["chat", "code:0.5"], name="assistant")
        assert again.existed and again.ref == "assistant@1"
        dare = reg.merge(base="tiny", adapters=["chat", "code", "math:0.7"], name="assistant", method="dare_ties",
                         params={"density": 0.5}, seed=7)
        assert dare.existed and dare.ref == "assistant@2"
        ties = reg.merge(base="tiny", adapters=["chat", "math"], name="pruned", method="ties",
                         params={"density": 0.3, "majority_sign_method": "frequency"})
        assert ties.existed and ties.ref == "pruned@1"
        kept = reg.merge(base="tiny", adapters=["chat:0.8"], name="recipe-only", keep="recipe")
        assert kept.existed and not kept.stored


def test_recipe_only_version_gets_its_files_back(legacy, tmp_path):
    home, expected = legacy
    with Registry.open(home=home) as reg:
        reg.export(ref="recipe-only@1", dest=tmp_path / "out")
        assert (tmp_path / "out" / "model.safetensors").is_file()
        info = reg.materialize(ref="recipe-only@1")
        assert info.stored and info.weights_digest == expected["recipe-only@1"]["digest"]
        assert set(info.files) == set(expected["recipe-only@1"]["files"])
        assert reg.verify(ref="recipe-only@1")[0].ok


def test_rollback_aliases_and_tracking_carry_on(legacy):
    home, expected = legacy
    with Registry.open(home=home) as reg:
        rolled = reg.rollback_adapter(ref="assistant@2", adapter="math")
        assert rolled.ref == "assistant@5" and rolled.details["parent"] == "assistant@2"
        exact = reg.rollback_adapter(ref="assistant@1", adapter="code")  # same recipe as assistant@3
        assert exact.digest == reg.get(ref="assistant@3").digest
        assert exact.weights_digest == expected["assistant@3"]["digest"]
        assert reg.get(ref="assistant@prod").version == 1
        assert [a.version for a in reg.alias_history(name="assistant", alias="prod")] == [1]
        assert reg.tracked(ref="assistant@1").metrics == {"eval_loss": 1.5}
        assert [h.ref for h in reg.search(tags={"stage": "candidate"})] == ["assistant@1"]
