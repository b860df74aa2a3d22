"""The registry on PostgreSQL (a shared team registry): the session's server from
tests/support/postgres.py, a fresh database per test, URLs as the README writes them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest


pytestmark = pytest.mark.postgres


def _at_once(fn, args: list) -> list[BaseException]:
    """``fn(arg)`` for each arg, each in its own thread, all at once; what they raised."""
    errors: list[BaseException] = []

    def run(arg):
        try:
            fn(arg)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_registry_on_postgres(pg_url, tmp_path, llama, llama_lora):
    from alembic import command

    from lorareg import Registry
    from lorareg.registry import db

    with Registry.open(home=tmp_path / "home", database_url=pg_url) as reg:
        base = reg.add_base(path=llama, name="llama")
        assert reg.add_base(path=llama, name="llama").existed
        reg.add_adapter(path=llama_lora, base="llama", name="chat")
        reg.set_alias(name="llama", alias="prod", version=1)
        assert reg.get(ref="llama@prod").digest == base.digest
        assert [v.ref for v in reg.ls()] == ["llama@1", "chat@1"]  # bases first (issue 14)
        command.check(db.alembic_config(db.make_engine(pg_url)))  # models match the revisions on PostgreSQL too
        assert reg.location().database.startswith("postgresql")


def test_concurrent_writers_get_distinct_versions(pg_url, tmp_path):
    """UNIQUE(name, version) plus retry: parallel writers never share a version number."""
    from tests.support.factories import make_llama

    from lorareg import Registry

    folders = [make_llama(tmp_path / f"m{i}", seed=100 + i, layers=1) for i in range(4)]

    def add(folder):
        with Registry.open(home=tmp_path / "home2", database_url=pg_url) as reg:
            reg.add_base(path=folder, name="race")

    Registry.open(home=tmp_path / "home2", database_url=pg_url).close()
    errors = _at_once(add, folders)
    assert not errors, errors
    with Registry.open(home=tmp_path / "home2", database_url=pg_url) as reg:
        assert sorted(v.version for v in reg.ls(name="race")) == [1, 2, 3, 4]


def test_concurrent_upserts_of_one_key_all_succeed(pg_url, tmp_path, llama):
    """Aliases, tags, params and settings set at once by several processes' connections:
    none may find the key absent and then collide on insert (UniqueViolation)."""
    from lorareg import Registry

    with Registry.open(home=tmp_path / "h", database_url=pg_url) as reg:
        reg.add_base(path=llama, name="llama")
    barrier = threading.Barrier(6)

    def race(i: int) -> None:
        with Registry.open(home=tmp_path / "h", database_url=pg_url) as reg:
            barrier.wait()
            reg.set_alias(name="llama", alias="prod", version=1)
            reg.set_tags(ref="llama@1", tags={"stage": f"s{i}"})
            reg.log_params(ref="llama@1", params={"lr": i})
            reg.set_setting(key="require-check", value=bool(i % 2))

    errors = _at_once(race, list(range(6)))
    assert not errors, errors
    with Registry.open(home=tmp_path / "h", database_url=pg_url) as reg:
        assert reg.get(ref="llama@prod").ref == "llama@1"


def test_team_registry_shares_rows_and_blobs(pg_url, tmp_path, llama, llama_lora):
    """Two machines: one PostgreSQL database, one shared blob folder, a LORAREG_HOME each."""
    from transformers import AutoModelForCausalLM

    from lorareg import Registry

    shared = tmp_path / "team-blobs"
    with Registry.open(home=tmp_path / "alice", database_url=pg_url, blobs=shared) as alice:
        alice.add_base(path=llama, name="team-llama")
        alice.add_adapter(path=llama_lora, base="team-llama", name="team-chat")
        merged = alice.merge(base="team-llama", adapters=["team-chat:0.5"], name="team-merge")
    with Registry.open(home=tmp_path / "bob", database_url=pg_url, blobs=shared) as bob:
        info = bob.get(ref=merged.ref)
        folder = bob.folder(ref=info.ref)  # bob's own folder of links into the shared blobs
        assert folder.is_relative_to(tmp_path / "bob")
        AutoModelForCausalLM.from_pretrained(folder)
        assert bob.verify(ref=merged.ref)[0].ok
        assert bob.rebuild(ref=merged.ref).ok


def _run_all(cmds: list[list[str]], env: dict) -> list[tuple[int, str, str]]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in cmds]
    outs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode,) + o for p, o in zip(procs, outs)]


def test_eight_writers_number_without_gaps_and_identical_content_is_one_version(pg_url, tmp_path, llama):
    """Eight processes at once on PostgreSQL: different contents get 1..8 (before: one run in
    three failed with `could not number the new version after 5 tries`); identical content
    ends as one version, and every process prints its ref.  (`add base` as the writer: it
    imports no torch, so the eight processes really do run at the same moment.)"""
    import json

    from tests.support.factories import make_llama

    env = {**os.environ, "LORAREG_DATABASE_URL": pg_url, "LORAREG_HOME": str(tmp_path / "h")}
    lorareg = [sys.executable, "-c", "from lorareg.cli.main import main; main()"]
    folders = [make_llama(tmp_path / f"pg8-{i}", seed=400 + i, layers=1, hidden=16) for i in range(8)]
    results = _run_all([lorareg + ["add", "base", str(f), "--name", "pg8", "--json"] for f in folders], env)
    assert all(rc == 0 for rc, _, _ in results), [(o, e) for _, o, e in results]
    assert sorted(json.loads(o)["version"] for _, o, _ in results) == list(range(1, 9))

    same = [lorareg + ["add", "base", str(llama), "--name", "pg8-same", "--json"]] * 8
    results = _run_all(same, env)
    assert all(rc == 0 for rc, _, _ in results), [e for _, _, e in results]
    assert {json.loads(o)["ref"] for _, o, _ in results} == {"pg8-same@1"}
    assert sorted(json.loads(o)["existed"] for _, o, _ in results) == [False] + [True] * 7


def test_readme_url_works_as_written_from_the_cli(pg_server, tmp_path, llama):
    """`LORAREG_DATABASE_URL=postgresql://user@host:port/db`, exactly the README's form, in a real
    `lorareg` process: before, SQLAlchemy 2.1 asked for psycopg 3 and the extra shipped psycopg2."""
    url = f"postgresql://lorareg@127.0.0.1:{pg_server.port}/{pg_server.create_database()}"
    env = {**os.environ, "LORAREG_DATABASE_URL": url, "LORAREG_HOME": str(tmp_path / "h")}
    lorareg = [sys.executable, "-c", "from lorareg.cli.main import main; main()"]
    add = subprocess.run(lorareg + ["add", "base", str(llama), "--name", "readme"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert add.returncode == 0, add.stderr
    ls = subprocess.run(lorareg + ["ls"], env=env, capture_output=True, text=True, timeout=300)
    assert ls.returncode == 0, ls.stderr
    assert "readme" in ls.stdout
    import psycopg  # the rows really are in that PostgreSQL database, written through psycopg 3

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT name, version FROM versions").fetchall() == [("readme", 1)]


def test_missing_driver_names_the_extra(monkeypatch, tmp_path):
    """Without psycopg installed: one line saying which extra to install, exit 1, nothing created."""
    from tests.support.cli import run

    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now raises ModuleNotFoundError
    for name in [m for m in sys.modules if m.startswith("sqlalchemy.dialects.postgresql.psycopg")]:
        monkeypatch.delitem(sys.modules, name)  # so the dialect imports its driver afresh
    monkeypatch.setenv("LORAREG_DATABASE_URL", "postgresql://lorareg@127.0.0.1:1/registry")
    result = run("ls", ok=False)
    assert result.exit_code == 1
    assert result.output.splitlines()[:2] == ["Error: the database URL needs the psycopg driver, which is not installed",
                                              "Hint: pip install 'lorareg[postgres]'"], result.output
    assert "Traceback" not in result.output
