"""Blobs as objects in S3-compatible storage: ``PREFIX/sha256/ab/cdef...``, through boto3.

Why boto3 (with its s3transfer): it reads the whole standard AWS configuration — the
``AWS_*`` environment, ``~/.aws/config`` profiles, SSO, instance roles — exactly as every other
tool a team runs does, and it speaks to any S3-compatible server (``AWS_ENDPOINT_URL``).
Throughput comes from parallel parts: uploads are multipart with several parts in flight, and
downloads and ranged reads are split into parts fetched by a thread pool (socket reads and
hashlib release the GIL, so threads overlap).  An object appears under its key only complete:
a single PUT or a CompleteMultipartUpload is atomic on S3.

Credentials never pass through lorareg: boto3 finds them; no message here names them, and the
endpoint is shown without any user-info part."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lorareg.errors import LoraregError, ObjectStoreError

__all__ = ["ObjectStore", "parse_object_url"]

PART_SIZE = 8 * 1024 * 1024  # multipart part and download part (S3's minimum part is 5 MB)
MAX_PARTS = 10_000  # S3's limit: a larger file gets larger parts
MULTIPART_THRESHOLD = 16 * 1024 * 1024
CONCURRENCY = 4  # parts in flight: memory is about CONCURRENCY x PART_SIZE per transfer
READ_PART = 8 * 1024 * 1024  # ranged reads are fetched in parts this size

Progress = Callable[[int], None] | None


@dataclass(frozen=True)
class ObjectUrl:
    bucket: str
    prefix: str  # no leading or trailing "/"; may be empty

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_object_url(url: str) -> ObjectUrl:
    parts = urlsplit(url)
    hint = "use s3://BUCKET/PREFIX; credentials come from the AWS environment (AWS_ACCESS_KEY_ID, ...), not the URL"
    if "@" in parts.netloc:  # never echo what may be a secret
        raise ObjectStoreError("LORAREG_BLOBS holds credentials in its s3:// URL", hint=hint)
    if parts.scheme != "s3" or not parts.netloc:
        raise ObjectStoreError(f"LORAREG_BLOBS={url!r} is not an s3://BUCKET/PREFIX URL", hint=hint)
    return ObjectUrl(bucket=parts.netloc, prefix=parts.path.strip("/"))


def _endpoint_shown(client: Any) -> str:
    parts = urlsplit(client.meta.endpoint_url or "")
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}" if host else "AWS S3"


class ObjectStore:
    """One bucket and prefix.  The client is made on first use: commands that never touch
    blobs (``ls``, ``show``) do not pay for importing boto3."""

    def __init__(self, url: str) -> None:
        self.location = parse_object_url(url)
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectStore({str(self.location)!r})"

    @property
    def url(self) -> str:
        return str(self.location)

    # -- client and errors ------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise LoraregError("LORAREG_BLOBS=s3://... needs boto3",
                               hint="pip install 'lorareg[s3]'") from None
        try:
            session = boto3.session.Session()
        except Exception as exc:  # AWS_PROFILE names a profile the config files lack
            raise ObjectStoreError(f"cannot set up the S3 client: {type(exc).__name__}",
                                   hint="check AWS_PROFILE and the AWS config files (~/.aws/config, ~/.aws/credentials)"
                                   ) from None
        custom_endpoint = bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5, read_timeout=60, max_pool_connections=2 * CONCURRENCY + 4,
            # S3-compatible servers take path-style addressing; AWS itself takes both.
            s3={"addressing_style": "path"} if custom_endpoint else None,
            # The sha256 of every blob is checked by us; boto3's extra CRC of each request only costs CPU.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        try:
            # boto3 reads AWS_DEFAULT_REGION (and profiles); AWS_REGION, which the other SDKs use, is read here.
            region = os.environ.get("AWS_REGION") or session.region_name or "us-east-1"
            return session.client("s3", config=config, region_name=region)
        except Exception as exc:  # a malformed endpoint URL, an unknown profile
            raise ObjectStoreError(f"cannot set up the S3 client: {type(exc).__name__}",
                                   hint="check AWS_ENDPOINT_URL, AWS_PROFILE and AWS_REGION") from None

    def error(self, exc: BaseException, *, doing: str) -> LoraregError:
        """A one-line error for a failed request: which, and what to set.  Never the credentials."""
        from botocore import exceptions as bx

        where = f"{self.url} at {_endpoint_shown(self.client)}"
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError,
                            bx.ReadTimeoutError)):
            return ObjectStoreError(f"cannot reach the object store for {where} while {doing}",
                                    hint="start the object server, or set AWS_ENDPOINT_URL to where it listens")
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return ObjectStoreError(f"no credentials for the object store ({where})",
                                    hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if isinstance(exc, bx.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchBucket",):
                return ObjectStoreError(f"bucket {self.location.bucket!r} does not exist at {_endpoint_shown(self.client)}",
                                        hint=f"create it (aws s3 mb s3://{self.location.bucket}) or fix LORAREG_BLOBS")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                        "InvalidClientTokenId", "AuthorizationHeaderMalformed"):
                return ObjectStoreError(f"the object store rejected the credentials ({code}) for {where}",
                                        hint="check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
            if code in ("AccessDenied", "403", "AllAccessDisabled"):
                return ObjectStoreError(f"no permission for {doing} in {where}",
                                        hint="grant these credentials read and write on the bucket, or use others")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return ObjectStoreError(f"the object store refused {doing} for {where}: {code or 'error'}",
                                    hint="is the object server running and healthy? check its log"
                                    if status >= 500 else "check the object server's log")
        if isinstance(exc, bx.BotoCoreError):
            return ObjectStoreError(f"object store error while {doing} for {where}: {type(exc).__name__}",
                                    hint="check AWS_ENDPOINT_URL and the object server")
        if isinstance(exc, LoraregError):
            return exc
        return ObjectStoreError(f"object store error while {doing} for {where}: {type(exc).__name__}",
                                hint="check AWS_ENDPOINT_URL and the object server")

    def _call(self, doing: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            raise self.error(exc, doing=doing) from None

    def key(self, hexdigest: str) -> str:
        rest = f"sha256/{hexdigest[:2]}/{hexdigest[2:]}"
        return f"{self.location.prefix}/{rest}" if self.location.prefix else rest

    @property
    def _blob_prefix(self) -> str:
        return self.key("00")[:-3]  # ".../sha256/"

    # -- requests -----------------------------------------------------------------------
    def check(self, *, write: bool = False) -> None:
        """One cheap request that fails with the same one-line errors as any other."""
        self._call("listing the bucket", self.client.list_objects_v2, Bucket=self.location.bucket,
                   Prefix=self._blob_prefix, MaxKeys=1)

    def size(self, hexdigest: str) -> int | None:
        """The object's size, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.location.bucket, Key=self.key(hexdigest))["ContentLength"])
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            if code in ("403", "400"):
                # A HEAD answer has no body, so a bare 403 may mean wrong credentials or a missing
                # permission: a request with a body (a listing) says which.
                self.check()
            raise self.error(exc, doing="looking up a blob") from None
        except Exception as exc:
            raise self.error(exc, doing="looking up a blob") from None

    def upload(self, path: os.PathLike[str] | str | int, hexdigest: str, *, size: int | None = None,
               progress: Progress = None) -> None:
        """Upload a local file (a path, or an open file descriptor: a file that may be renamed
        meanwhile) under its blob key.  Large files go up as a multipart upload with
        CONCURRENCY parts in flight, each read with ``pread``; the object appears only when the
        upload completes, and a failed one is aborted."""
        fd = path if isinstance(path, int) else os.open(os.fspath(path), os.O_RDONLY)
        try:
            total = os.fstat(fd).st_size if size is None else size
            if total < MULTIPART_THRESHOLD:
                self.put_bytes(os.pread(fd, total, 0), hexdigest)
                if progress is not None:
                    progress(total)
                return
            self._multipart(fd, total, hexdigest, progress)
        finally:
            if not isinstance(path, int):
                os.close(fd)

    def _multipart(self, fd: int, total: int, hexdigest: str, progress: Progress) -> None:
        bucket, key = self.location.bucket, self.key(hexdigest)
        upload_id = self._call("starting an upload", self.client.create_multipart_upload, Bucket=bucket, Key=key,
                               Metadata={"sha256": hexdigest})["UploadId"]

        def part(number: int, offset: int) -> dict[str, Any]:
            data = os.pread(fd, min(part_size, total - offset), offset)
            etag = self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                           Body=data)["ETag"]
            if progress is not None:
                progress(len(data))
            return {"PartNumber": number, "ETag": etag}

        part_size = max(PART_SIZE, -(-total // MAX_PARTS))
        try:
            with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="lorareg-part") as pool:
                parts = list(pool.map(part, *zip(*[(i + 1, off) for i, off in
                                                    enumerate(range(0, total, part_size))])))
            self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException as exc:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass  # the server is gone: gc aborts it later (abort_stale_uploads)
            if isinstance(exc, Exception):
                raise self.error(exc, doing="uploading a blob") from None
            raise

    def put_bytes(self, data: bytes, hexdigest: str) -> None:
        self._call("uploading a blob", self.client.put_object, Bucket=self.location.bucket,
                   Key=self.key(hexdigest), Body=data, Metadata={"sha256": hexdigest})

    def _get_into(self, key: str, start: int, view: memoryview) -> None:
        if not len(view):
            return
        resp = self.client.get_object(Bucket=self.location.bucket, Key=key,
                                      Range=f"bytes={start}-{start + len(view) - 1}")
        body, got = resp["Body"], 0
        # Straight into the caller's buffer (urllib3's readinto): no chunk objects, whose
        # allocation across the reading threads' malloc arenas showed up as resident memory.
        raw = getattr(body, "_raw_stream", None)
        readinto = getattr(raw, "readinto", None)
        try:
            while got < len(view):
                if readinto is not None:
                    n = readinto(view[got:])
                else:
                    chunk = body.read(min(len(view) - got, 1 << 20))
                    n = len(chunk)
                    view[got:got + n] = chunk
                if not n:
                    raise ObjectStoreError(f"object {key} ended {len(view) - got} bytes early",
                                           hint="the object is truncated: run lorareg verify --all")
                got += n
        finally:
            body.close()

    def read_range(self, hexdigest: str, start: int, view: memoryview, *, pool: ThreadPoolExecutor | None = None) -> None:
        """Fill ``view`` with the object's bytes from ``start``: large reads in parallel parts,
        each written straight into its slice of the caller's buffer (no second copy of the range)."""
        key = self.key(hexdigest)
        parts = [(off, min(READ_PART, len(view) - off)) for off in range(0, len(view), READ_PART)] or [(0, 0)]
        try:
            if pool is None or len(parts) == 1:
                for off, n in parts:
                    self._get_into(key, start + off, view[off:off + n])
            else:
                for f in [pool.submit(self._get_into, key, start + off, view[off:off + n]) for off, n in parts]:
                    f.result()
        except Exception as exc:
            raise self.error(exc, doing="reading a blob") from None

    def download(self, hexdigest: str, size: int, sink: Callable[[memoryview], None], *,
                 progress: Progress = None) -> None:
        """Stream the whole object to ``sink`` in order, with up to CONCURRENCY parts in flight."""
        parts = [(off, min(PART_SIZE, size - off)) for off in range(0, size, PART_SIZE)]
        if not parts:
            return
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            def fetch(off: int, n: int) -> bytearray:
                buf = bytearray(n)
                self.read_range(hexdigest, off, memoryview(buf))
                return buf

            pending = [pool.submit(fetch, *p) for p in parts[:CONCURRENCY]]
            nxt = len(pending)
            while pending:
                buf = pending.pop(0).result()
                if nxt < len(parts):
                    pending.append(pool.submit(fetch, *parts[nxt]))
                    nxt += 1
                sink(memoryview(buf))
                if progress is not None:
                    progress(len(buf))

    def iter_objects(self) -> Iterator[tuple[str, int]]:
        """(hex, size) of every blob object; keys that are not blob names are skipped."""
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self._blob_prefix
        try:
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
                for obj in page.get("Contents", ()):
                    rest = obj["Key"][len(prefix):]
                    if len(rest) == 65 and rest[2] == "/":
                        yield rest[:2] + rest[3:], int(obj["Size"])
        except LoraregError:
            raise
        except Exception as exc:
            raise self.error(exc, doing="listing blobs") from None

    def delete(self, hexes: Iterable[str]) -> None:
        keys = [{"Key": self.key(h)} for h in hexes]
        for i in range(0, len(keys), 1000):
            resp = self._call("deleting blobs", self.client.delete_objects, Bucket=self.location.bucket,
                              Delete={"Objects": keys[i:i + 1000], "Quiet": True})
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise ObjectStoreError(f"could not delete {first.get('Key')}: {first.get('Code')}",
                                       hint="check the credentials' permissions on the bucket")

    def abort_stale_uploads(self, older_than_s: float, *, keep: set[str] = frozenset()) -> int:
        """Abort multipart uploads a killed writer left (they hold storage but no object);
        never one of a blob in ``keep`` (a live writer's: a long upload may outlast a lease)."""
        cutoff = time.time() - older_than_s
        resp = self._call("listing unfinished uploads", self.client.list_multipart_uploads,
                          Bucket=self.location.bucket, Prefix=self._blob_prefix)
        aborted = 0
        prefix = self._blob_prefix
        for up in resp.get("Uploads", ()):
            rest = up["Key"][len(prefix):]
            if up["Initiated"].timestamp() < cutoff and rest[:2] + rest[3:] not in keep:
                self._call("aborting an unfinished upload", self.client.abort_multipart_upload,
                           Bucket=self.location.bucket, Key=up["Key"], UploadId=up["UploadId"])
                aborted += 1
        return aborted
