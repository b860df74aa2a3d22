"""A version's digest names exactly one model, and a recipe never claims inputs it did not read:
config/tokenizer/chat-template changes change the digest; a changed referenced base is refused;
identical content added concurrently is one version; Trainer checkpoints leave their training
state behind (and their logged metrics become tracked metrics)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorareg.cli.main import cli
from lorareg.errors import IntegrityError


def _copy(src: Path, dest: Path, edit=None) -> Path:
    shutil.copytree(src, dest)
    if edit:
        edit(dest)
    return dest


def _set_json(name: str, **values):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        data.update(values)
        (folder / name).write_text(json.dumps(data, indent=2))
    return edit


def _state(home: Path) -> dict:
    """Everything a refused command must leave as it was: rows (the db), blobs, version folders."""
    out = {}
    for p in sorted(home.rglob("*")):
        if p.is_file() and not p.name.startswith(("registry.db", ".run-")) and "/tmp/" not in str(p):
            out[str(p.relative_to(home))] = p.stat().st_size
    return out


def test_a_config_change_is_another_model(reg, llama, llama_lora, tmp_path):
    """Finding 1: same tensors, other rms_norm_eps: before, the merge answered "already merged"."""
    reg.add_base(path=llama, name="big")
    other = _copy(llama, tmp_path / "eps", _set_json("config.json", rms_norm_eps=1e-3))
    second = reg.add_base(path=other, name="big")
    first = reg.get(ref="big@1")
    assert second.ref == "big@2" and not second.existed
    assert second.digest != first.digest and second.weights_digest == first.weights_digest
    reg.add_adapter(path=llama_lora, base="big@1", name="chat")
    m1 = reg.merge(base="big@1", adapters=["chat"], name="big-merged")
    m2 = reg.merge(base="big@2", adapters=["chat"], name="big-merged", allow_base_mismatch=True)
    assert m2.ref == "big-merged@2" and not m2.existed
    assert json.loads((m2.path / "config.json").read_text())["rms_norm_eps"] == 1e-3
    assert m1.weights_digest == m2.weights_digest and m1.digest != m2.digest
    d = reg.diff(a=m1.ref, b=m2.ref)
    assert d.same_weights and not d.same_digest


@pytest.mark.parametrize("edit", [
    lambda f: (f / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}"),
    _set_json("generation_config.json", eos_token_id=[2, 7]),
    _set_json("tokenizer_config.json", model_max_length=64),
], ids=["chat-template", "generation-config", "tokenizer"])
def test_side_files_that_change_behaviour_change_the_digest(reg, llama, tmp_path, edit):
    base = reg.add_base(path=llama, name="b")
    other = reg.add_base(path=_copy(llama, tmp_path / "other", edit), name="b")
    assert not other.existed and other.digest != base.digest and other.weights_digest == base.weights_digest


def test_what_only_records_the_writer_or_the_card_is_the_same_content(reg, llama, tmp_path):
    base = reg.add_base(path=llama, name="b")
    resaved = _copy(llama, tmp_path / "resaved", _set_json("config.json", transformers_version="4.0.0"))
    (resaved / "README.md").write_text("# notes of mine\n")
    again = reg.add_base(path=resaved, name="b")
    assert again.existed and again.ref == base.ref


def test_a_changed_reference_base_is_refused_and_nothing_written(reg, llama, llama_lora, tmp_path, lorareg_home):
    """Finding 2: before, the merge succeeded and recorded the original digest."""
    folder = _copy(llama, tmp_path / "ref-llama")
    reg.add_base(path=folder, name="ref", reference=True)
    reg.add_adapter(path=llama_lora, base="ref", name="chat")
    kept = reg.merge(base="ref", adapters=["chat:0.5"], name="kept", keep="recipe")
    before = _state(lorareg_home)
    shard = folder / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 1  # one byte of one weight
    shard.write_bytes(bytes(data))

    for attempt in (lambda: reg.merge(base="ref", adapters=["chat"], name="m"),
                    lambda: reg.rebuild(ref=kept.ref),
                    lambda: reg.export(ref=kept.ref, dest=tmp_path / "out")):
        with pytest.raises(IntegrityError, match="tracked by reference, and .*model.safetensors changed") as err:
            attempt()
        assert "lorareg add base" in err.value.hint and "\n" not in str(err.value)
    assert _state(lorareg_home) == before and reg.count(name="m") == 0 and not (tmp_path / "out").exists()

    out = CliRunner().invoke(cli, ["merge", "ref", "chat", "--name", "m"])
    assert out.exit_code == 1
    assert out.output.startswith("Error: ref@1 is tracked by reference, and ") and "Hint: register the new" in out.output


def test_a_touched_but_unchanged_reference_is_rehashed_once(reg, llama, llama_lora, tmp_path, monkeypatch):
    from lorareg.store import digest as digest_mod

    folder = _copy(llama, tmp_path / "ref-llama")
    reg.add_base(path=folder, name="ref", reference=True)
    reg.add_adapter(path=llama_lora, base="ref", name="chat")
    os.utime(folder / "model.safetensors")  # new mtime, same bytes
    hashed: list[str] = []
    real = digest_mod.file_sha256
    monkeypatch.setattr(digest_mod, "file_sha256", lambda p, **kw: hashed.append(Path(p).name) or real(p, **kw))
    reg.merge(base="ref", adapters=["chat"], name="m1")
    assert hashed == ["model.safetensors"]  # the fast path took every other file
    hashed.clear()
    reg.merge(base="ref", adapters=["chat:0.5"], name="m2")
    assert hashed == []  # its new stat was recorded


def test_identical_content_added_concurrently_is_one_version(reg, llama, llama_lora, lorareg_home):
    """Finding 3: four processes adding the same adapter under one name made same@1..same@4."""
    reg.add_base(path=llama, name="llama")
    cmd = [sys.executable, "-c", "from lorareg.cli.main import main; main()", "add", "adapter", str(llama_lora),
           "--base", "llama", "--name", "same", "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    refs = {json.loads(o)["ref"] for o, _ in outs}
    assert refs == {"same@1"} and reg.count(name="same") == 1
    assert sorted(json.loads(o)["existed"] for o, _ in outs) == [False, True, True, True]


def test_a_trainer_checkpoint_leaves_its_training_state_behind(reg, llama, llama_lora, tmp_path):
    """Finding 5: optimizer/scheduler/RNG/training-args pickles were stored with the adapter."""
    ckpt = _copy(llama_lora, tmp_path / "checkpoint-900")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        (ckpt / name).write_bytes(os.urandom(2048))
    (ckpt / "trainer_state.json").write_text(json.dumps({
        "global_step": 900, "epoch": 1.5, "max_steps": 1000,
        "log_history": [{"step": 450, "epoch": 0.75, "loss": 2.5, "learning_rate": 1e-4},
                        {"step": 900, "epoch": 1.5, "loss": 1.25, "eval_loss": 1.75}]}))
    reg.add_base(path=llama, name="llama")
    plain = reg.add_adapter(path=llama_lora, base="llama", name="plain")
    info = reg.add_adapter(path=ckpt, base="llama", name="chat")
    assert set(info.files) == set(plain.files)  # config, weights, README: what defines the adapter
    assert info.digest == plain.digest
    assert sorted(info.details["skipped_training_state"]) == ["optimizer.pt", "rng_state.pth", "scheduler.pt",
                                                              "trainer_state.json", "training_args.bin"]
    tracked = reg.tracked(ref=info.ref)
    assert tracked.params == {"global_step": 900, "epoch": 1.5, "max_steps": 1000}
    assert tracked.metrics == {"loss": 1.25, "learning_rate": 1e-4, "eval_loss": 1.75}
    assert [(p.key, p.step) for p in tracked.history if p.key == "loss"] == [("loss", 450), ("loss", 900)]


def test_add_says_what_training_state_it_skipped(llama, llama_lora, tmp_path):
    ckpt = _copy(llama_lora, tmp_path / "checkpoint-10")
    (ckpt / "optimizer.pt").write_bytes(b"state")
    runner = CliRunner()
    assert runner.invoke(cli, ["add", "base", str(llama), "--name", "llama"]).exit_code == 0
    out = runner.invoke(cli, ["add", "adapter", str(ckpt), "--base", "llama", "--name", "chat"])
    assert out.exit_code == 0 and "skipped training state (not part of the model): optimizer.pt" in out.output
