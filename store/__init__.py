"""Bytes: content-addressed blobs, digests, atomic writes, verify, gc.  No torch, no SQL."""

from lorareg.store.blobs import BlobStore
from lorareg.store.digest import checkpoint_digest, digest_json, file_sha256, manifest_digest
from lorareg.store.safetensors_header import read_header
from lorareg.store.snapshot import link_snapshot

__all__ = [
    "BlobStore",
    "checkpoint_digest",
    "digest_json",
    "file_sha256",
    "link_snapshot",
    "manifest_digest",
    "read_header",
]
