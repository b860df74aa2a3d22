"""Bad input: one clear line, exit 1, and nothing written (no rows, no blobs, no folders)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from click.testing import CliRunner

from lorareg.cli.main import cli
from tests.support.home import snapshot_state


def run(*args):
    result = CliRunner().invoke(cli, list(args))
    return result


@pytest.fixture
def seeded(lorareg_home, llama):
    """A registry holding one base, so 'unchanged' is checked against a non-empty state."""
    assert run("add", "base", str(llama), "--name", "llama").exit_code == 0
    return snapshot_state(lorareg_home)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _check_refused(result, lorareg_home, before, *needles):
    assert result.exit_code == 1, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]
    assert snapshot_state(lorareg_home) == before


def test_missing_path(seeded, lorareg_home, tmp_path):
    r = run("add", "base", str(tmp_path / "nope"))
    _check_refused(r, lorareg_home, seeded, "no such checkpoint folder")


def test_folder_that_is_not_a_checkpoint(seeded, lorareg_home, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    r = run("add", "base", str(tmp_path / "junk"))
    _check_refused(r, lorareg_home, seeded, "no config.json")


def test_truncated_safetensors(seeded, lorareg_home, llama, tmp_path):
    bad = _copy(llama, tmp_path / "trunc")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    r = run("add", "base", str(bad), "--name", "trunc")
    _check_refused(r, lorareg_home, seeded, "model.safetensors")


def test_header_that_lies_about_offsets(seeded, lorareg_home, llama, tmp_path):
    bad = _copy(llama, tmp_path / "liar")
    raw = (bad / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 4]  # claims more bytes than its shape holds
    new = json.dumps(header).encode()
    new += b" " * (n - len(new)) if len(new) <= n else b""
    (bad / "model.safetensors").write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    r = run("add", "base", str(bad), "--name", "liar")
    _check_refused(r, lorareg_home, seeded, "model.safetensors")


def test_pickle_only_checkpoint_refused_without_flag(seeded, lorareg_home, llama, tmp_path):
    import torch
    from safetensors.torch import load_file

    bad = tmp_path / "pickled"
    bad.mkdir()
    shutil.copy(llama / "config.json", bad / "config.json")
    torch.save(load_file(llama / "model.safetensors"), bad / "pytorch_model.bin")
    r = run("add", "base", str(bad), "--name", "pickled")
    _check_refused(r, lorareg_home, seeded, "pickle")
    assert "--allow-pickle" in r.output


def test_adapter_for_other_hidden_size(seeded, lorareg_home, tmp_path):
    from tests.support.factories import make_llama, make_lora

    wide = make_llama(tmp_path / "wide", hidden=64)
    lora = make_lora(wide, tmp_path / "wide-lora")
    r = run("add", "adapter", str(lora), "--base", "llama", "--name", "wide")
    _check_refused(r, lorareg_home, seeded)
    assert "proj" in r.output  # names the first mismatching module


def test_adapter_for_other_architecture(seeded, lorareg_home, gpt2_lora):
    r = run("add", "adapter", str(gpt2_lora), "--base", "llama", "--name", "gpt")
    _check_refused(r, lorareg_home, seeded, "c_attn")


@pytest.mark.parametrize("name", ["Upper", "../evil", "a/b", "a..b", "-lead", ""])
def test_bad_names(seeded, lorareg_home, llama, name):
    r = run("add", "base", str(llama), "--name", name)
    _check_refused(r, lorareg_home, seeded, "invalid name")


def test_unknown_reference(seeded, lorareg_home):
    r = run("show", "ghost@2")
    _check_refused(r, lorareg_home, seeded, "unknown reference")
    assert "lorareg ls" in r.output


def test_database_from_newer_lorareg(seeded, lorareg_home):
    import sqlite3

    con = sqlite3.connect(lorareg_home / "registry.db")
    con.execute("UPDATE alembic_version SET version_num='9999'")
    con.commit()
    con.close()
    before = snapshot_state(lorareg_home)
    r = run("ls")
    _check_refused(r, lorareg_home, before, "newer lorareg")


def test_usage_error_exits_2():
    r = run("add", "base")
    assert r.exit_code == 2
