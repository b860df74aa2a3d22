"""The whole-model digest: what changes behaviour changes it, what only records the writer
(or is not the model) does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lorareg.store.digest import checkpoint_digest
from lorareg.store.model_digest import WRITER_FIELDS, defining_files


@pytest.fixture
def ckpt(tmp_path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"w": np.arange(6, dtype=np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "rms_norm_eps": 1e-6,
                                                    "transformers_version": "5.23.0"}, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    (folder / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    (folder / "tokenizer_config.json").write_text(json.dumps({"name_or_path": "/home/me/run1", "model_max_length": 8}))
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    (folder / "README.md").write_text("# my model\n")
    return folder


def _changed(ckpt: Path, tmp_path: Path, edit) -> tuple[str, str, str, str]:
    before = checkpoint_digest(ckpt)
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    edit(other)
    after = checkpoint_digest(other)
    return before.digest, after.digest, before.weights_digest, after.weights_digest


def _json_edit(name: str, **changes):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        data.update(changes)
        (folder / name).write_text(json.dumps(data))
    return edit


@pytest.mark.parametrize("edit", [
    _json_edit("config.json", rms_norm_eps=1e-5),
    _json_edit("generation_config.json", eos_token_id=[2, 7]),
    _json_edit("tokenizer_config.json", model_max_length=16),
    lambda f: (f / "tokenizer.json").write_text('{"model": {"vocab": {"b": 0}}}'),
    lambda f: (f / "chat_template.jinja").write_text("{{ messages | tojson }}"),
    lambda f: (f / "special_tokens_map.json").write_text('{"eos_token": "</s>"}'),
], ids=["config", "generation-config", "tokenizer-config", "tokenizer", "chat-template", "new-special-tokens"])
def test_what_defines_behaviour_changes_the_digest_not_the_weights_digest(ckpt, tmp_path, edit):
    digest, other, weights, other_weights = _changed(ckpt, tmp_path, edit)
    assert digest != other and weights == other_weights


@pytest.mark.parametrize("edit", [
    _json_edit("config.json", transformers_version="4.57.0"),  # another library wrote it
    _json_edit("tokenizer_config.json", name_or_path="/elsewhere"),  # loaded from another path
    lambda f: (f / "config.json").write_text(json.dumps(json.loads((f / "config.json").read_text()),
                                                        sort_keys=True)),  # key order, spacing
    lambda f: (f / "README.md").write_text("# a new card\n"),
    lambda f: (f / "optimizer.pt").write_bytes(b"training state"),
    lambda f: (f / "trainer_state.json").write_text('{"global_step": 9}'),
], ids=["transformers-version", "name-or-path", "formatting", "model-card", "optimizer", "trainer-state"])
def test_what_does_not_define_behaviour_keeps_the_digest(ckpt, tmp_path, edit):
    digest, other, weights, other_weights = _changed(ckpt, tmp_path, edit)
    assert digest == other and weights == other_weights


def test_resharding_keeps_both_digests(ckpt, tmp_path):
    from safetensors.numpy import load_file

    other = tmp_path / "sharded"
    shutil.copytree(ckpt, other)
    (other / "model.safetensors").unlink()
    w = load_file(str(ckpt / "model.safetensors"))["w"]
    save_file({"w": w}, str(other / "model-00001-of-00001.safetensors"))
    a, b = checkpoint_digest(ckpt), checkpoint_digest(other)
    assert (a.digest, a.weights_digest) == (b.digest, b.weights_digest)


def test_extra_facts_join_the_digest(ckpt):
    assert checkpoint_digest(ckpt, extra={"adapter_config": "x"}).digest != checkpoint_digest(ckpt).digest


def test_defining_files_and_writer_fields_are_documented_sets():
    assert defining_files(["config.json", "README.md", "model.safetensors", "tokenizer.model", "vocab.txt",
                           "adapter_config.json", "sub/config.json", "additional_chat_templates/tool.jinja"]) == [
        "additional_chat_templates/tool.jinja", "config.json", "tokenizer.model", "vocab.txt"]
    assert "transformers_version" in WRITER_FIELDS and "eos_token_id" not in WRITER_FIELDS
