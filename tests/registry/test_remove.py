"""rm and rename (issue 14): refusals that name what refers to a version, tombstones that keep
rows and lineage while the bytes go, numbers never reused, and renames that recipes follow."""

from __future__ import annotations

import pytest

from lorareg.errors import LoraregError, NotFoundError


def _blob(reg, sha: str):
    return reg.location().blobs / "sha256" / sha[:2] / sha[2:]


def _events(reg, action):
    return [e for e in reg.log(limit=200) if e.action == action]


def test_unreferenced_version_is_removed_and_shared_bytes_stay(seeded, llama_lora):
    solo = seeded.add_adapter(path=llama_lora, base="llama", name="solo")  # chat@1's bytes under a second name
    blobs = {f.sha256 for p, f in solo.files.items() if p != "README.md"}
    shared = {f.sha256 for f in seeded.get(ref="chat@1").files.values()}
    res = seeded.remove(refs=["solo@1"], message="not needed")
    assert res.removed == ("solo@1",) and res.kept_for == {}
    assert not solo.path.exists()  # the link folder
    assert all(_blob(seeded, sha).exists() for sha in shared)  # chat@1 has the same bytes: they stay
    info = seeded.get(ref="solo@1")
    assert info.removed_at is not None and not info.stored
    assert [i.ref for i in seeded.ls(name="solo")] == []  # nothing was made from it: not listed
    assert [h.ref for h in seeded.query(name="solo", removed=True)] == ["solo@1"]
    (event,) = _events(seeded, "rm")
    assert event.ref == "solo@1" and event.args["message"] == "not needed" and not event.args["forced"]
    assert blobs <= shared


def test_bytes_nothing_else_needs_are_evicted(seeded):
    merged = seeded.merge(base="llama", adapters=["chat"], name="m")
    own = {f.sha256 for p, f in merged.files.items() if p.endswith(".safetensors")}
    assert all(_blob(seeded, sha).exists() for sha in own)
    res = seeded.remove(refs=["m@1"])
    assert res.bytes_freed > 0 and res.blobs_removed >= 1
    assert not any(_blob(seeded, sha).exists() for sha in own)


def test_refused_while_used_naming_what_uses_it(seeded, hub, monkeypatch):
    from tests.support.hub_state import ALICE

    monkeypatch.setenv("HF_TOKEN", ALICE)
    merged = seeded.merge(base="llama", adapters=["chat", "code:0.5"], name="assistant")
    seeded.set_alias(name="code", alias="prod", version=1)
    with pytest.raises(LoraregError) as exc:
        seeded.remove(refs=["chat@1"])
    assert "chat@1 is still used by merge assistant@1 (an input)" in str(exc.value)
    assert "--force" in exc.value.hint
    with pytest.raises(LoraregError, match="alias code@prod"):
        seeded.remove(refs=["code@1"])
    with pytest.raises(LoraregError, match=r"adapter chat@1 \(trained on it\)"):
        seeded.remove(refs=["llama@1"])
    seeded.push(ref=merged.ref, repo="alice/assistant")
    with pytest.raises(LoraregError, match="Hub push alice/assistant@v1"):
        seeded.remove(refs=[merged.ref])
    from click.testing import CliRunner

    from lorareg.cli.main import cli

    shown = CliRunner().invoke(cli, ["show", merged.ref]).output  # show lists where it went
    assert "Hub pushes" in shown and "alice/assistant  v1" in shown
    assert seeded.get(ref="chat@1").removed_at is None and seeded.get(ref="chat@1").path.exists()
    assert _events(seeded, "rm") == []  # refused: nothing recorded, nothing removed


def test_removing_a_merge_and_its_input_together_needs_no_force(seeded):
    seeded.merge(base="llama", adapters=["chat"], name="assistant")
    res = seeded.remove(refs=["assistant@1", "chat@1"])
    assert set(res.removed) == {"assistant@1", "chat@1"} and res.kept_for == {}


def test_force_keeps_a_tombstone_with_its_lineage(seeded):
    merged = seeded.merge(base="llama", adapters=["chat", "code:0.5"], name="assistant")
    seeded.set_alias(name="chat", alias="prod", version=1)
    res = seeded.remove(refs=["chat@1"], force=True)
    assert res.kept_for["chat@1"] == ("merge assistant@1 (an input)", "alias chat@prod")
    assert res.aliases_removed == ("chat@prod",)
    listed = {i.ref: i for i in seeded.ls()}
    assert listed["chat@1"].removed_at is not None  # a merge was made from it: still listed, as removed
    graph = seeded.lineage(ref=merged.ref)
    node = next(n for n in graph.nodes if n.ref == "chat@1")
    assert node.removed and ("assistant@1", "chat@1", "adapter") in {(e.src, e.dst, e.role) for e in graph.edges}
    assert [a.version for a in seeded.alias_history(name="chat", alias="prod")] == [1, 0]
    assert _events(seeded, "rm")[0].args["forced"]
    # nothing can use it any more, each with one clear line
    with pytest.raises(NotFoundError, match="chat@1 was removed"):
        seeded.merge(base="llama", adapters=["chat@1"], name="again")
    with pytest.raises(NotFoundError, match="every version of chat was removed"):
        seeded.merge(base="llama", adapters=["chat"], name="again")
    with pytest.raises(NotFoundError, match="chat@1 was removed"):
        seeded.rebuild(ref=merged.ref)  # its recipe needs the removed adapter's bytes
    with pytest.raises(NotFoundError, match="was removed"):
        seeded.set_alias(name="chat", alias="prod", version=1)
    with pytest.raises(NotFoundError, match="was removed"):
        seeded.remove(refs=["chat@1"])
    assert seeded.get(ref="chat@1").removed_at is not None  # show still works


def test_numbers_are_never_reused_and_content_can_come_back(seeded, llama_lora):
    seeded.remove(refs=["code@1"])
    again = seeded.add_adapter(path=llama_lora, base="llama", name="code")
    assert again.ref == "code@2" and not again.existed  # the removed row is not "already registered"
    assert seeded.get(ref="code").ref == "code@2"


def test_rename_moves_every_version_and_recipes_follow(seeded):
    first = seeded.merge(base="llama", adapters=["chat", "code:0.5"], name="assistant")
    seeded.rollback_adapter(ref=first.ref, adapter="code", strategy="subtract")
    seeded.set_alias(name="chat", alias="prod", version=1)
    res = seeded.rename(old="chat", new="chat-v1")
    assert (res.old, res.new, res.versions, res.recipes_updated) == ("chat", "chat-v1", 1, 2)
    assert seeded.get(ref="chat-v1@prod").ref == "chat-v1@1"
    assert seeded.get(ref="chat-v1").path.exists()
    recipe = seeded.get(ref="assistant@1").details["recipe"]
    assert [a["ref"] for a in recipe["adapters"]] == ["chat-v1@1", "code@1"]
    assert seeded.rebuild(ref="assistant@1").ok and seeded.rebuild(ref="assistant@2").ok  # digests unchanged
    assert [a.version for a in seeded.alias_history(name="chat-v1", alias="prod")] == [1]  # history follows
    with pytest.raises(NotFoundError) as exc:
        seeded.get(ref="chat")
    assert exc.value.hint == "did you mean `chat-v1`?"
    (event,) = _events(seeded, "rename")
    assert event.args["old"] == "chat" and event.args["new"] == "chat-v1"
    # the old name is free again, for any kind
    seeded.merge(base="llama", adapters=["code"], name="chat")
    # a subtraction's source is renamed too; its recorded recipe digest stays, so it still rebuilds
    seeded.rename(old="assistant", new="asst")
    sub = seeded.get(ref="asst@2").details["recipe"]["subtracted"]
    assert sub["source"]["ref"] == "asst@1"
    assert seeded.rebuild(ref="asst@2").ok


def test_rename_refusals(seeded):
    with pytest.raises(LoraregError, match="already taken by an adapter"):
        seeded.rename(old="chat", new="code")
    with pytest.raises(LoraregError, match="give names, not versions"):
        seeded.rename(old="chat@1", new="x")
    with pytest.raises(LoraregError, match="invalid name"):
        seeded.rename(old="chat", new="Bad Name")
    with pytest.raises(NotFoundError) as exc:
        seeded.rename(old="caht", new="x")
    assert exc.value.hint == "did you mean `chat`?"
    assert seeded.get(ref="chat").ref == "chat@1"


@pytest.mark.postgres
def test_query_rm_and_rename_on_postgres(pg_url, tmp_path, llama, llama_lora, llama_lora2):
    """The SQL behind ls --where/--sort (a regexp-guarded cast of params), rm and rename, on PostgreSQL."""
    from lorareg import Registry

    with Registry.open(home=tmp_path / "home", database_url=pg_url) as reg:
        reg.add_base(path=llama, name="llama")
        reg.add_adapter(path=llama_lora, base="llama", name="chat")
        reg.add_adapter(path=llama_lora2, base="llama", name="code")
        reg.log_params(ref="chat", params={"lr": 2e-4, "optim": "adamw"})
        reg.log_params(ref="code", params={"lr": "warmup", "optim": "sgd"})  # text where others have numbers
        reg.log_metrics(ref="chat", metrics={"eval_loss": 0.4}, step=10)
        reg.log_metrics(ref="code", metrics={"eval_loss": 0.3}, step=10)
        assert [h.ref for h in reg.query(where=["param.lr>1e-4"])] == ["chat@1"]
        assert [h.ref for h in reg.query(where=["optim=sgd"])] == ["code@1"]
        assert [h.ref for h in reg.query(kind="adapter", sort="eval_loss")] == ["code@1", "chat@1"]
        assert [h.ref for h in reg.query(sort="-lr")] == ["chat@1", "code@1", "llama@1"]
        reg.merge(base="llama", adapters=["chat"], name="m")
        with pytest.raises(LoraregError, match="still used by merge m@1"):
            reg.remove(refs=["chat@1"])
        reg.remove(refs=["chat@1"], force=True)
        assert [i.ref for i in reg.ls()] == ["llama@1", "chat@1", "code@1", "m@1"]  # the tombstone stays listed
        assert reg.rename(old="code", new="code-v1").versions == 1
        assert reg.ref_candidates(prefix="co") == ["code-v1"]


def test_removed_reference_base_leaves_its_folder_alone(reg, llama, tmp_path):
    import shutil

    folder = shutil.copytree(llama, tmp_path / "mine")
    reg.add_base(path=folder, name="mine", reference=True)
    reg.remove(refs=["mine@1"])
    assert (folder / "config.json").exists()  # the user's folder: never ours to delete
    (folder / "config.json").write_text("{}")  # and no longer watched
    assert all(r.ok for r in reg.verify(all_versions=True))
