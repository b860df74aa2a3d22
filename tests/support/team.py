"""Two machines of one team, as the issue's campaigns need them: one PostgreSQL database
(``pg_url``), one bucket on the SeaweedFS server (``s3_bucket``), and two LORAREG_HOMEs.

What the checks compare is read from the real things, not through lorareg: the rows with
psycopg, the objects with boto3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LORAREG = [sys.executable, "-c", "from lorareg.cli.main import main; main()"]
PREFIX = "team"


@dataclass
class Team:
    db_url: str
    bucket: str
    server: object  # tests.support.seaweed.SeaweedServer
    root: Path
    extra_env: dict = field(default_factory=dict)

    @property
    def blobs(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def home(self, machine: str) -> Path:
        return self.root / f"home-{machine}"

    def env(self, machine: str, **extra: str) -> dict:
        """The environment of a process on ``machine`` ("a" or "b"): the AWS variables come from
        the ``s3_bucket`` fixture (os.environ), the rest names the team's database and bucket."""
        return {**os.environ, "LORAREG_HOME": str(self.home(machine)), "LORAREG_DATABASE_URL": self.db_url,
                "LORAREG_BLOBS": self.blobs, **self.extra_env, **extra}

    def cli(self, machine: str, *args: object, ok: bool = True, timeout: float = 240,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """``lorareg ARGS`` as a process on ``machine``; with ``ok`` it must exit 0."""
        done = subprocess.run(LORAREG + [str(a) for a in args], env={**self.env(machine), **(env or {})},
                              capture_output=True, text=True, timeout=timeout)
        if ok:
            assert done.returncode == 0, f"lorareg {' '.join(map(str, args))} on {machine}:\n{done.stdout}{done.stderr}"
        return done

    def ls(self, machine: str) -> list[dict]:
        return json.loads(self.cli(machine, "ls", "--json").stdout)

    # -- the bucket, through boto3 alone ----------------------------------------------------
    def objects(self) -> dict[str, int]:
        """hex -> size of every blob object under the team's prefix."""
        client = self.server.client()
        found: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{PREFIX}/sha256/"):
            for obj in page.get("Contents", ()):
                ab, rest = obj["Key"].split("/")[-2:]
                found[ab + rest] = int(obj["Size"])
        return found

    def unfinished_uploads(self) -> list[str]:
        return [u["Key"] for u in self.server.client().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])]

    # -- the database, through psycopg alone --------------------------------------------------
    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.db_url) as conn:
            return conn.execute(sql).fetchall()

    def versions(self) -> list[tuple[str, int]]:
        return sorted(self.query("SELECT name, version FROM versions"))

    def needed_blobs(self) -> dict[str, set[str]]:
        """blob -> the versions whose committed rows say it is stored (their files, their manifest)."""
        rows = self.query("SELECT f.sha256, v.name || '@' || v.version FROM files f JOIN versions v "
                          "ON v.id = f.version_id WHERE v.stored")
        rows += self.query("SELECT manifest_sha256, name || '@' || version FROM versions "
                           "WHERE manifest_sha256 IS NOT NULL")
        needed: dict[str, set[str]] = {}
        for sha, ref in rows:
            needed.setdefault(sha, set()).add(ref)
        return needed

    def rows_without_objects(self) -> dict[str, set[str]]:
        """Blobs committed rows need that the bucket does not hold: must always be empty."""
        present = self.objects()
        return {sha: refs for sha, refs in self.needed_blobs().items() if sha not in present}

    def orphans(self) -> set[str]:
        """Objects no committed row needs."""
        return set(self.objects()) - set(self.needed_blobs())


@pytest.fixture
def team(pg_url, s3_bucket, s3_server, tmp_path) -> Team:
    t = Team(db_url=pg_url, bucket=s3_bucket, server=s3_server, root=tmp_path)
    for machine in ("a", "b"):
        t.home(machine).mkdir()
    return t
