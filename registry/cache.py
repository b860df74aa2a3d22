"""This machine's cache of a team's object store (``LORAREG_HOME/cache``): what it holds,
which versions' files each blob is, and pruning it to a size.

Only a registry whose blobs live in an object store (``LORAREG_BLOBS=s3://…``) has a cache; a
local blob folder *is* the store, and evicting from it would lose data, so both functions
refuse it with one line rather than report an empty cache (which a script could not tell
from a cache that happens to be empty)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import String, literal, union_all
from sqlmodel import select

from lorareg.errors import LoraregError
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.results import CacheEntry, CacheReport

# SQLite allows 32766 bound parameters per statement (older builds 999): the digests go in
# batches this size, each batch one statement for files and manifests together.
_BATCH = 900
MANIFEST = "(manifest)"


def cache_ls(ctx: Context) -> CacheReport:
    """Every cached blob, least recently used first, with the versions that use it."""
    store = _remote(ctx)
    cached = store.cached()
    entries = _entries(ctx, cached)
    return CacheReport(location=store.cache.root, store=store.url, limit=store.cache_max,
                       total_bytes=sum(e.size for e in entries), entries=entries)


def cache_prune(ctx: Context, *, max_bytes: int | None = None) -> CacheReport:
    """Evict least recently used blobs until the cache holds at most ``max_bytes`` (default
    ``LORAREG_CACHE_MAX``).  Only the local copies go: the object store keeps every blob, and
    a version that needs one fetches it again (hashed as it enters the cache)."""
    if max_bytes is not None and max_bytes < 0:
        raise LoraregError(f"a cache size cannot be negative ({max_bytes})", hint="lorareg cache prune --max-size 10G")
    store = _remote(ctx)
    removed = store.prune(max_bytes=max_bytes)
    left = store.cached()
    entries = _entries(ctx, [*removed, *left])
    gone = entries[:len(removed)]
    return CacheReport(location=store.cache.root, store=store.url,
                       limit=store.cache_max if max_bytes is None else max_bytes,
                       total_bytes=sum(b.size for b in left), entries=entries[len(removed):], removed=gone,
                       bytes_freed=sum(b.size for b in removed))


def _remote(ctx: Context):
    from lorareg.store.remote_blobs import RemoteBlobStore

    if not isinstance(ctx.blobs, RemoteBlobStore):
        raise LoraregError(f"there is no cache: this registry keeps its blobs in a local folder "
                           f"({ctx.blobs_location}), which is the store itself",
                           hint="a cache exists only with an object store: set LORAREG_BLOBS=s3://BUCKET/PREFIX "
                                "(or --blobs s3://BUCKET/PREFIX)")
    return ctx.blobs


def _entries(ctx: Context, cached: list) -> tuple[CacheEntry, ...]:
    users = _users(ctx, {b.sha256 for b in cached})
    out = []
    for b in cached:
        found = sorted(users.get(b.sha256, ()), key=lambda u: (u[0], u[1], u[2]))
        refs = tuple(dict.fromkeys(f"{name}@{version}" for name, version, _ in found))
        paths = tuple(sorted({path for _, _, path in found}))
        out.append(CacheEntry(sha256=b.sha256, size=b.size,
                              last_used=datetime.fromtimestamp(b.last_used, tz=timezone.utc), refs=refs, paths=paths))
    return tuple(out)


def _users(ctx: Context, hexes: set[str]) -> dict[str, set[tuple[str, int, str]]]:
    """digest -> {(name, version, path)}: the live versions (not removed) whose file or tensor
    manifest it is."""
    users: dict[str, set[tuple[str, int, str]]] = {}
    todo = sorted(hexes)
    with ctx.session() as session:
        for i in range(0, len(todo), _BATCH):
            batch = todo[i:i + _BATCH]
            files = (select(m.FileRow.sha256, m.Version.name, m.Version.version, m.FileRow.path)
                     .join(m.Version, m.Version.id == m.FileRow.version_id)
                     .where(m.FileRow.sha256.in_(batch), m.Version.removed_at == None))  # noqa: E711
            manifests = (select(m.Version.manifest_sha256, m.Version.name, m.Version.version,
                                literal(MANIFEST, type_=String))
                         .where(m.Version.manifest_sha256.in_(batch), m.Version.removed_at == None))  # noqa: E711
            for sha, name, version, path in session.execute(union_all(files, manifests)).all():
                users.setdefault(sha, set()).add((name, version, path))
    return users
