"""Schema: alembic revisions create it, the models have not drifted, newer databases are refused."""

from __future__ import annotations

import sqlite3

import pytest
from alembic import command
from alembic.script import ScriptDirectory

from lorareg.errors import SchemaError
from lorareg.migrations import HEAD
from lorareg.registry import db


def test_empty_database_upgrades_to_head_and_models_match(tmp_path):
    engine = db.make_engine(db.sqlite_url(tmp_path / "r.db"))
    db.upgrade(engine)
    assert db.current_revision(engine) == HEAD
    cfg = db.alembic_config(engine)
    command.check(cfg)  # raises if the SQLModel tables differ from the revisions


def test_head_constant_is_the_script_head(tmp_path):
    engine = db.make_engine(db.sqlite_url(tmp_path / "r.db"))
    heads = ScriptDirectory.from_config(db.alembic_config(engine)).get_heads()
    assert heads == [HEAD]


def test_sqlite_pragmas(tmp_path):
    engine = db.make_engine(db.sqlite_url(tmp_path / "r.db"))
    db.upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS


def test_newer_database_is_refused(tmp_path):
    path = tmp_path / "r.db"
    engine = db.make_engine(db.sqlite_url(path))
    db.upgrade(engine)
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num='0999_future'")
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match="newer lorareg"):
        db.upgrade(db.make_engine(db.sqlite_url(path)))


def test_registry_open_is_idempotent(tmp_path):
    from lorareg import Registry

    Registry.open(home=tmp_path / "h").close()
    with Registry.open(home=tmp_path / "h") as reg:
        assert reg.ls() == []
