"""One test per CLI command through click's CliRunner, plus one real subprocess run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from lorareg.cli.main import cli
from tests.support.cli import run


def js(*args):
    return json.loads(run(*args, "--json").output)


def test_init(lorareg_home):
    out = js("init")
    assert out["home"] == str(lorareg_home.resolve())
    assert (lorareg_home / "registry.db").exists()


def test_add_base_json_fields(llama):
    out = js("add", "base", llama, "--name", "llama")
    assert {"ref", "name", "version", "digest", "path"} <= set(out)
    assert out["ref"] == "llama@1" and out["version"] == 1


def test_add_adapter_and_show(llama, llama_lora):
    run("add", "base", llama, "--name", "llama")
    out = js("add", "adapter", llama_lora, "--base", "llama", "--name", "chat")
    assert out["ref"] == "chat@1" and out["details"]["r"] == 4
    shown = js("show", "chat@1")
    assert shown["digest"] == out["digest"] and shown["details"]["base"] == "llama@1"
    text = run("show", "chat").output
    assert "chat@1" in text and "r" in text and "adapter_model.safetensors" in text


def test_ls_kinds(llama, llama_lora):
    run("add", "base", llama, "--name", "llama")
    run("add", "adapter", llama_lora, "--base", "llama", "--name", "chat")
    assert [i["ref"] for i in js("ls")] == ["llama@1", "chat@1"]  # bases first (issue 14; was alphabetical by kind)
    assert [i["ref"] for i in js("ls", "bases")] == ["llama@1"]
    assert [i["ref"] for i in js("ls", "adapters")] == ["chat@1"]
    text = run("ls").output
    assert "llama@1" in text and "LlamaForCausalLM" in text


def test_verify_ok_and_corrupted_blob(llama, lorareg_home):
    out = js("add", "base", llama, "--name", "llama")
    assert all(r["ok"] for r in js("verify", "llama"))
    sha = out["files"]["model.safetensors"]["sha256"]
    blob = lorareg_home / "blobs" / "sha256" / sha[:2] / sha[2:]
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    r = run("verify", "--all", ok=False)
    assert r.exit_code == 1
    assert "BAD  llama@1" in r.output and "model.safetensors" in r.output


def test_log_and_alias(llama, tmp_path):
    from tests.support.factories import make_llama

    run("add", "base", llama, "--name", "llama")
    run("add", "base", make_llama(tmp_path / "b", seed=5), "--name", "llama")
    assert "llama@prod -> 1" in run("alias", "set", "llama", "prod", "1").output
    assert js("alias", "ls", "llama")[0]["version"] == 1
    actions = [e["action"] for e in js("log")]
    assert actions[:3] == ["alias", "add", "add"]
    run("alias", "rm", "llama", "prod")
    assert js("alias", "ls") == []


def test_help_lists_every_command():
    out = run("--help").output
    for name in ("init", "add", "ls", "show", "verify", "log", "alias"):
        assert name in out
    for name, command in cli.commands.items():
        assert command.help, f"{name} has no help"


def test_real_subprocess(llama, lorareg_home):
    exe = Path(sys.executable).parent / "lorareg"
    env = dict(os.environ, LORAREG_HOME=str(lorareg_home))
    added = subprocess.run([str(exe), "add", "base", str(llama), "--name", "llama", "--json"],
                           capture_output=True, text=True, env=env, check=True)
    assert json.loads(added.stdout)["ref"] == "llama@1"
    listed = subprocess.run([str(exe), "ls"], capture_output=True, text=True, env=env, check=True)
    assert "llama@1" in listed.stdout  # plain text when piped: no rich box characters
    assert "━" not in listed.stdout and "│" not in listed.stdout
    bad = subprocess.run([str(exe), "show", "ghost"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr
