"""A throwaway PostgreSQL server for the whole test session, on 127.0.0.1 and a free TCP port.

``pg_server`` starts it once (when the first test asks for it) and stops it at the end;
``pg_url`` hands each test a fresh, empty database as the README writes the URL:
``postgresql://lorareg@127.0.0.1:PORT/DBNAME`` (SQLAlchemy 2.1 maps it to psycopg 3).
Trust authentication: a password in the URL is accepted and ignored."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.logs import tail

USER = "lorareg"


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian keeps them off PATH
    return found[-1] if found else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    root: Path
    port: int
    _names = itertools.count(1)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its name is unique in this session."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.root / "log", lines)


def _unavailable() -> str | None:
    if not (_bin("initdb") and _bin("pg_ctl")):
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed (pip install -e '.[test]')"
    return None


def _start(root: Path) -> PostgresServer:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_postgres + [initdb, "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, text=True)
    port = free_port()
    # The socket lives in our own folder: the default (/var/run/postgresql) may not exist or be ours.
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(as_postgres + [pg_ctl, "-D", str(data), "-w", "-t", "60", "-l", str(root / "log"), "-o", options,
                                  "start"], check=True, capture_output=True, text=True)
    return PostgresServer(root, port)


def _stop(root: Path) -> None:
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(as_postgres + [_bin("pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                   capture_output=True)


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session.  A developer laptop without PostgreSQL may skip;
    CI, which has it, must never skip quietly: there a missing or failing server fails."""
    missing = _unavailable()
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(missing)
    root = Path(tempfile.mkdtemp(prefix="lorareg-pg-"))
    try:
        try:
            server = _start(root)
        except subprocess.CalledProcessError as exc:
            log = root / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"PostgreSQL did not start: {exc.cmd[-1] if exc.cmd else ''} {exc.stderr}\n{tail}")
        yield server
    finally:
        _stop(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh database for this test, so tests never see each other's rows."""
    return pg_server.url(pg_server.create_database())
