"""Engine creation and schema upgrades.

SQLite gets WAL, a busy timeout and foreign keys on every connection; any other
SQLAlchemy URL (PostgreSQL for a shared team registry) is used as given.  The schema
is created and upgraded only by alembic revisions."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, create_engine

from lorareg.errors import SchemaError
from lorareg.migrations import HEAD, SCRIPT_LOCATION

BUSY_TIMEOUT_MS = 30_000


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


WRITER = "lorareg_writer"
_MIGRATION_LOCK = 0x6C6F7261726567  # "lorareg": the advisory lock key of schema upgrades  # execution option of the sessions that write versions (see writer_session)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - exercised by every test
            # We emit BEGIN ourselves: pysqlite's implicit one is DEFERRED and cannot be IMMEDIATE.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # pragma: no cover - exercised by every test
            # A writer takes the database's write lock when it begins, so its check for an
            # identical version and the row it inserts are one step for every other writer.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITER) else "BEGIN")

        return engine
    try:
        return create_engine(url, pool_pre_ping=True)  # imports the URL's driver (DBAPI) here
    except ImportError as exc:  # ModuleNotFoundError, or psycopg's "no pq wrapper available"
        raise _missing_driver(url, exc) from None


# The optional extra that installs a driver lorareg supports.
_DRIVER_EXTRAS = {"psycopg": "lorareg[postgres]"}


def _missing_driver(url: str, exc: ImportError):
    from sqlalchemy.engine import make_url

    from lorareg.errors import LoraregError

    driver = make_url(url).get_driver_name()  # "psycopg" for postgresql:// (SQLAlchemy 2.1's default)
    extra = _DRIVER_EXTRAS.get(driver)
    hint = f"pip install '{extra}'" if extra else f"install the Python package that provides {exc.name or driver}"
    return LoraregError(f"the database URL needs the {driver} driver, which is not installed", hint=hint)


def writer_session(engine: Engine, name: str):
    """A session in which registering a version under ``name`` is serialised with every other
    writer of that name: SQLite takes its write lock at BEGIN; PostgreSQL a transaction-scoped
    advisory lock keyed by the name.  Inside it, "is this content already here?" and "insert
    the next number" cannot interleave with another process doing the same."""
    import hashlib

    from sqlmodel import Session

    session = Session(engine.execution_options(**{WRITER: True}), expire_on_commit=False)
    if engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"lorareg:{name}".encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    return session


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except Exception:
            conn.rollback()
            return None
    return row[0] if row else None


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, *, blobs: Path | None = None) -> None:
    """Bring the database to HEAD; refuse one stamped by a newer lorareg.  ``blobs`` is the
    blob folder, which revisions that recompute digests read small files from."""
    rev = current_revision(engine)
    if rev == HEAD:
        return
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = alembic_config(engine)
    known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
    if rev is not None and rev not in known:
        raise SchemaError(f"the registry database is at schema revision {rev!r}, written by a newer lorareg")
    # One upgrader at a time: processes opening a new (or older) registry together must not
    # create the same tables twice.  SQLite: the write lock at BEGIN; PostgreSQL: an advisory lock.
    with engine.execution_options(**{WRITER: True}).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        cfg.attributes["blobs"] = blobs
        command.upgrade(cfg, "head")  # a no-op when another process got there first
