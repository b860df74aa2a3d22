"""``lorareg cache ls|prune`` against a real S3 server (SeaweedFS): the per-machine cache of an
object store lists what it holds with the versions that use it, prunes to a size, and a
pruned version still exports (its blobs fetched again and hashed as they enter).  What is
compared is read from the disk and the bucket, not through lorareg."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import run

PREFIX = "team"


def cached_files(home: Path) -> dict[str, int]:
    """hex -> size of every blob in the home's cache, read from the disk."""
    root = home / "cache" / "sha256"
    return {p.parent.name + p.name: p.stat().st_size for p in root.glob("??/*") if p.is_file()} if root.exists() else {}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tests.support.factories import make_llama

    return make_llama(tmp_path_factory.mktemp("cache-cli") / "tiny", layers=1)


@pytest.fixture
def team(s3_bucket, monkeypatch) -> str:
    """This test's registry keeps its blobs in the fresh bucket (its database: SQLite in LORAREG_HOME)."""
    url = f"s3://{s3_bucket}/{PREFIX}"
    monkeypatch.setenv("LORAREG_BLOBS", url)
    monkeypatch.delenv("LORAREG_CACHE_MAX", raising=False)
    return url


def file_digests(ref: str) -> dict[str, str]:
    """relative path -> sha256 of a version's files, as `show --json` records them."""
    info = json.loads(run("show", ref, "--json").stdout)
    return {path: f["sha256"] for path, f in info["files"].items()}


def test_ls_lists_the_cached_blobs_with_the_versions_that_use_them(team, tiny, lorareg_home):
    run("add", "base", tiny, "--name", "tiny")
    run("add", "base", tiny, "--name", "twin")  # the same bytes under a second name: shared blobs
    files = file_digests("tiny@1")
    assert file_digests("twin@1") == files

    report = json.loads(run("cache", "ls", "--json").stdout)
    on_disk = cached_files(lorareg_home)
    assert {e["sha256"]: e["size"] for e in report["entries"]} == on_disk
    assert report["total_bytes"] == sum(on_disk.values())
    assert report["store"] == team and report["location"] == str(lorareg_home / "cache")
    assert report["limit"] == 100 * 1024 ** 3  # LORAREG_CACHE_MAX's default, 100G
    by_sha = {e["sha256"]: e for e in report["entries"]}
    for path, sha in files.items():  # every file of the version is cached, named by both versions
        assert by_sha[sha]["refs"] == ["tiny@1", "twin@1"], (path, by_sha[sha])
        assert path in by_sha[sha]["paths"]
    used = [e["last_used"] for e in report["entries"]]
    assert used == sorted(used)  # least recently used first

    out = run("cache", "ls")
    rows = out.stdout.splitlines()
    assert rows[0].split()[:2] == ["blob", "size"]
    assert len(rows) == 1 + len(on_disk)  # piped: the table alone on stdout ...
    weights = files["model.safetensors"]
    row = next(r for r in rows if r.startswith(weights[:12]))
    assert "tiny@1, twin@1" in row and "model.safetensors" in row
    assert f"{len(on_disk)} blobs" in out.stderr and team in out.stderr  # ... the total on stderr


def test_prune_to_zero_evicts_everything_and_versions_still_export(team, tiny, lorareg_home, tmp_path):
    run("add", "base", tiny, "--name", "tiny")
    before = cached_files(lorareg_home)
    assert before

    report = json.loads(run("cache", "prune", "--max-size", "0", "--json").stdout)
    assert {e["sha256"] for e in report["removed"]} == set(before)
    assert report["bytes_freed"] == sum(before.values()) and report["total_bytes"] == 0
    assert report["entries"] == [] and report["limit"] == 0
    assert cached_files(lorareg_home) == {}
    assert json.loads(run("cache", "ls", "--json").stdout)["entries"] == []

    files = file_digests("tiny")  # reading rows needs no blob
    run("export", "tiny", tmp_path / "out")
    for path, sha in files.items():  # fetched from the bucket again; the bytes are the recorded ones
        assert sha256_of(tmp_path / "out" / path) == sha, path
    assert set(files.values()) <= set(cached_files(lorareg_home))  # ... and cached again on the way
    assert "tiny@1" in run("show", "tiny").stdout

    n = len(cached_files(lorareg_home))
    again = run("cache", "prune", "--max-size", "0").stdout.splitlines()  # the text form: what went, what it freed
    assert len(again) == n + 1 and all(line.startswith("evicted ") for line in again)
    assert again[-1].startswith(f"evicted {n} blobs, freed ") and "; the cache holds 0 B of 0 B (" in again[-1]
    assert run("cache", "prune", "--max-size", "0").stdout.startswith("nothing to evict")


def test_cache_max_bounds_the_cache_after_an_add(team, tiny, lorareg_home, monkeypatch, tmp_path):
    monkeypatch.setenv("LORAREG_CACHE_MAX", "1")
    run("add", "base", tiny, "--name", "tiny")
    assert sum(cached_files(lorareg_home).values()) <= 1  # every blob is bigger than a byte: none stays
    report = json.loads(run("cache", "ls", "--json").stdout)
    assert report["limit"] == 1 and report["total_bytes"] == 0
    assert "tiny@1" in run("show", "tiny").stdout

    monkeypatch.setenv("LORAREG_CACHE_MAX", "100G")  # a plain `prune` goes down to LORAREG_CACHE_MAX
    run("export", "tiny", tmp_path / "out2")
    assert cached_files(lorareg_home)
    assert run("cache", "prune").stdout.startswith("nothing to evict")
    monkeypatch.setenv("LORAREG_CACHE_MAX", "1K")
    pruned = json.loads(run("cache", "prune", "--json").stdout)
    assert pruned["limit"] == 1024 and pruned["total_bytes"] == sum(cached_files(lorareg_home).values()) <= 1024
    assert pruned["removed"]


def test_a_version_still_exports_under_a_limit_smaller_than_it(team, tiny, lorareg_home, monkeypatch, tmp_path):
    monkeypatch.setenv("LORAREG_CACHE_MAX", "1")
    run("add", "base", tiny, "--name", "tiny")
    run("export", "tiny", tmp_path / "out")  # whole: read from the bucket through the cache
    for path, sha in file_digests("tiny").items():
        assert sha256_of(tmp_path / "out" / path) == sha, path
    assert sum(cached_files(lorareg_home).values()) <= 1  # and the limit holds once it is done


@pytest.mark.parametrize("args", [("cache", "ls"), ("cache", "prune"), ("cache", "prune", "--max-size", "0")])
def test_a_local_registry_has_no_cache(args, lorareg_home, monkeypatch):
    monkeypatch.delenv("LORAREG_BLOBS", raising=False)
    out = run(*args, ok=False)
    assert out.exit_code == 1
    lines = out.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: there is no cache") and str(lorareg_home / "blobs") in lines[0]
    assert lines[1].startswith("Hint:") and "LORAREG_BLOBS=s3://" in lines[1]
    assert not (lorareg_home / "cache").exists()


def test_a_bad_max_size_is_one_line(team):
    out = run("cache", "prune", "--max-size", "ten gigs", ok=False)
    assert out.exit_code == 1
    assert out.stderr.splitlines() == ["Error: --max-size='ten gigs' is not a size",
                                       "Hint: set --max-size like 50G, 512M or a byte count"]


def test_init_and_location_name_the_bucket_and_the_cache(team, lorareg_home):
    out = run("init").stdout
    assert f"blobs: {team} (this machine's cache: {lorareg_home / 'cache'})" in out
    loc = json.loads(run("init", "--json").stdout)
    assert loc["blobs"] == team and loc["cache"] == str(lorareg_home / "cache")
    from lorareg import Registry

    with Registry.open() as reg:
        assert reg.location().blobs == team and reg.location().cache == lorareg_home / "cache"
        assert reg.cache_ls().store == team


def test_a_local_registry_location_is_its_folder(lorareg_home):
    loc = json.loads(run("init", "--json").stdout)
    assert loc["blobs"] == str(lorareg_home / "blobs") and loc["cache"] is None
    assert "blobs:" not in run("init").stdout


def test_ls_pipes_into_head(team, tiny, lorareg_home):
    run("add", "base", tiny, "--name", "tiny")
    cmd = f"{sys.executable} -c 'from lorareg.cli.main import main; main()' cache ls | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=os.environ,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.split()[:2] == ["blob", "size"], done
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr


def test_ls_on_a_terminal_is_a_table_closed_by_the_total(team, tiny, lorareg_home, monkeypatch):
    from lorareg.cli import render

    run("add", "base", tiny, "--name", "tiny")
    monkeypatch.setattr(render, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "160")
    out = run("cache", "ls")
    print(out.stdout)
    lines = out.stdout.rstrip().splitlines()
    assert lines[0].split() == ["blob", "size", "last", "used", "used", "by", "files"]
    n = len(cached_files(lorareg_home))
    assert lines[-1].startswith(f"{n} blobs, ") and " of 100.0 GiB in " in lines[-1] and team in lines[-1]
    assert sum("tiny@1" in line for line in lines) == n


def test_a_second_machine_starts_with_the_two_variables_and_an_empty_cache(team, pg_url, tiny, tmp_path, monkeypatch):
    """The README's team setup: the same LORAREG_DATABASE_URL and LORAREG_BLOBS, another LORAREG_HOME,
    nothing copied; each machine's cache holds what that machine used."""
    monkeypatch.setenv("LORAREG_DATABASE_URL", pg_url)
    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "machine-a"))
    run("add", "base", tiny, "--name", "tiny")
    files = file_digests("tiny@1")
    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "machine-b"))
    assert json.loads(run("cache", "ls", "--json").stdout)["entries"] == []
    run("export", "tiny", tmp_path / "out")
    for path, sha in files.items():
        assert sha256_of(tmp_path / "out" / path) == sha, path
    b = {e["sha256"]: e["refs"] for e in json.loads(run("cache", "ls", "--json").stdout)["entries"]}
    assert set(files.values()) <= set(b) and all(b[sha] == ["tiny@1"] for sha in files.values())
    assert set(b) == set(cached_files(tmp_path / "machine-b"))
