"""Bad input for a registry whose blobs live in object storage, through `lorareg` processes:
each problem is one `Error:` line (which, and what to set) plus a hint, exit 1, and nothing
half-written.  Credentials (the SeaweedFS server's recognisable fake ones) never appear in
output, events, model cards, the web view's JSON or any file the registry writes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import free_port

LORAREG = [sys.executable, "-c", "from lorareg.cli.main import main; main()"]


def lorareg(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(LORAREG + [str(a) for a in args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=240)


def _untouched(home: Path, bucket: str | None, s3_server) -> None:
    """No version row, no lease, no version folder, no object: nothing half-written."""
    db = home / "registry.db"
    if db.exists():
        con = sqlite3.connect(db)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in {"versions", "files", "artifacts", "leases", "pending_blobs"} & tables:
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        con.close()
    assert not any((home / "versions").glob("*/*")) if (home / "versions").exists() else True
    if bucket:
        assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def _one_error(done: subprocess.CompletedProcess) -> str:
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    assert any(line.startswith("Hint:") for line in text.splitlines()), text
    return text


BAD_SERVER = {
    # case: (environment changes, what the error line names, what the hint says to set)
    "unreachable endpoint": (lambda s, b: {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"},
                             "cannot reach", "AWS_ENDPOINT_URL"),
    "wrong secret key": (lambda s, b: {"AWS_SECRET_ACCESS_KEY": "lorareg-wrong-secret-0000"},
                         "credentials", "AWS_SECRET_ACCESS_KEY"),
    "unknown access key id": (lambda s, b: {"AWS_ACCESS_KEY_ID": "LORAREGNOSUCHKEY"}, "credentials",
                              "AWS_ACCESS_KEY_ID"),
    "no credentials": (lambda s, b: {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "credentials",
                       "AWS_ACCESS_KEY_ID"),
    "missing bucket": (lambda s, b: {"LORAREG_BLOBS": "s3://lorareg-no-such-bucket/p"}, "lorareg-no-such-bucket",
                       "LORAREG_BLOBS"),
    "read-only identity": (lambda s, b: {"AWS_ACCESS_KEY_ID": s.read_only_access_key,
                                         "AWS_SECRET_ACCESS_KEY": s.read_only_secret_key}, "permission", "Hint:"),
}


@pytest.mark.parametrize("case", list(BAD_SERVER))
def test_object_store_problem_is_one_line_and_writes_nothing(case, s3_bucket, s3_server, lorareg_home, llama):
    change, names, hint = BAD_SERVER[case]
    env = {"LORAREG_BLOBS": f"s3://{s3_bucket}/p", **change(s3_server, s3_bucket)}
    env = {k: v for k, v in env.items() if v != ""}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if change(s3_server, s3_bucket).get(var) == "":
            os.environ.pop(var)  # restored by monkeypatch (s3_bucket set it)
    text = _one_error(lorareg("add", "base", llama, "--name", "x", env=env))
    error = next(line for line in text.splitlines() if line.startswith("Error:"))
    assert names in error, text
    assert hint in text, text
    assert s3_server.secret_key not in text and s3_server.read_only_secret_key not in text
    _untouched(lorareg_home, s3_bucket, s3_server)
    listed = lorareg("ls", "--json", env=env)  # ls needs no blob: it works, and shows nothing
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr


@pytest.mark.parametrize("value", ["gs://bucket/p", "ftp://host/p", "FILE", "s3://", "s3:///p",
                                   "s3://AKIA:secret@bucket/p", "s3:/bucket/p", "s3//bucket/p", "S3://bucket/p"])
def test_blobs_that_is_neither_a_folder_nor_s3_is_one_line(value, lorareg_home, tmp_path, llama):
    if value == "FILE":
        value = str(tmp_path / "a-file")
        Path(value).write_text("not a folder")
    for args in (["add", "base", llama, "--name", "x"], ["ls"]):
        text = _one_error(lorareg(*args, env={"LORAREG_BLOBS": value}))
        assert "LORAREG_BLOBS" in text, text
        assert "secret" not in text
    via_option = lorareg("--blobs", value, "ls")
    assert via_option.returncode == 1 and "Traceback" not in via_option.stderr, via_option.stderr
    _untouched(lorareg_home, None, None)


def test_credentials_never_appear(s3_bucket, s3_server, lorareg_home, llama, llama_lora, tmp_path, monkeypatch):
    """A whole session of commands (with --debug, which shows tracebacks), a failing one
    included: neither the secret nor the access key id shows up in any output, event, model
    card, web view JSON or file under the home (the SQLite database included)."""
    from starlette.testclient import TestClient

    from lorareg import Registry
    from lorareg.cli.web.app import create_app

    monkeypatch.setenv("LORAREG_BLOBS", f"s3://{s3_bucket}/p")
    secrets = [s3_server.secret_key, s3_server.access_key]
    seen: list[str] = []
    for args in (["add", "base", llama, "--name", "llama"], ["add", "adapter", llama_lora, "--base", "llama",
                                                              "--name", "chat"],
                 ["merge", "llama", "chat:0.5", "--name", "m", "-m", "merged"], ["show", "m"], ["show", "m", "--json"],
                 ["log", "--json"], ["log"], ["ls", "--json"], ["verify", "--all"], ["gc"],
                 ["export", "m", tmp_path / "out"]):
        for debug in ([], ["--debug"]):
            if args[0] in ("add", "merge", "export") and debug:
                continue  # writers once each
            done = lorareg(*debug, *args)
            assert done.returncode == 0, done.stderr
            seen.append(done.stdout + done.stderr)
    # A failure with --debug: the traceback names no credential either.
    bad = lorareg("--debug", "add", "base", llama, "--name", "y",
                  env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    assert bad.returncode == 1
    seen.append(bad.stdout + bad.stderr)
    wrong = lorareg("--debug", "add", "base", llama, "--name", "y", env={"AWS_SECRET_ACCESS_KEY": "wrong-" + "x" * 30})
    assert wrong.returncode == 1
    seen.append(wrong.stdout + wrong.stderr)
    with Registry.open() as reg:
        seen.append(reg.model_card(ref="m@1") or "")
        seen.append((reg.folder(ref="m@1") / "README.md").read_text())
        with TestClient(create_app(reg), base_url="http://127.0.0.1") as client:
            for path in ("/api/overview", "/api/versions", "/api/versions/m@1", "/api/events", "/api/aliases",
                         "/api/lineage/m@1", "/", "/v/m@1"):
                r = client.get(path)
                assert r.status_code == 200, path
                seen.append(r.text)
    blob = "\n".join(seen)
    assert "s3://" in blob  # the location is shown ...
    for secret in secrets:  # ... never who signs for it
        assert secret not in blob
    for path in [p for p in lorareg_home.rglob("*") if p.is_file()] + list((tmp_path / "out").rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, path
