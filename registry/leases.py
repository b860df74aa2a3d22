"""Writers and ``gc`` coordinate in the database: leases and pending blobs.

A writer puts blobs into the store *before* it commits the rows that name them; in between,
nothing but its lease tells ``gc`` that those blobs are wanted.  ``writing(ctx)`` inserts a
``leases`` row (owner, expiry) that a heartbeat thread keeps ahead of the clock, and points
the store's ``claim`` hook at ``Lease.claim``: the store calls it with a blob's digest before
it relies on the blob (before the blob appears under its name, and before an existing copy is
reused), and the claim commits a ``pending_blobs`` row.  When the writer's rows have committed
it deletes its lease (the pending rows go by ON DELETE CASCADE): the rows protect the blobs now.

``collecting(ctx)`` is what ``gc`` and ``rm`` run under: one transaction holding the gc lock
exclusively (SQLite: the write lock, taken at BEGIN IMMEDIATE; PostgreSQL: an advisory lock
that claims and rows transactions take shared).  Inside it gc deletes the leases that lapsed,
reads the protected set (blobs of committed rows plus pending blobs of live leases) and
deletes every other blob, then commits.

Why no blob a writer relies on is lost: a claim commits before the store relies on its blob,
and gc reads the protected set and deletes under the exclusive lock, so either the claim
committed before gc's read (the blob is protected), or it waited until gc's deletes were done
(the store then finds the blob missing and writes it).  A writer's rows transaction holds the
same lock shared from ``assert_held`` to its commit, so gc sees either no rows (and the
writer's pending blobs) or the committed rows; blobs put *inside* that transaction (the model
card, whose text names the version number) need no pending row.  A lease that lapsed (its
process was paused longer than the lease, or cut off from the database) may have lost its
blobs to a gc: it is never renewed again (renewals require it to be unexpired), and its
writer fails at its next claim or at ``assert_held`` with ``LeaseLostError``, registering
nothing.  Expiry is judged by the database's clock on PostgreSQL (machines' clocks may
differ) and by the local clock on SQLite (one machine's file).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from lorareg.errors import LeaseLostError, LoraregError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from lorareg.registry.context import Context

ENV = "LORAREG_LEASE_SECONDS"
DEFAULT_SECONDS = 600.0
# The PostgreSQL advisory lock between gc (exclusive) and claims / rows transactions (shared).
# A space keeps it apart from db.writer_session's "lorareg:NAME" keys (names have no spaces).
GC_KEY = int.from_bytes(hashlib.sha256(b"lorareg gc").digest()[:8], "big", signed=True)


def lease_seconds() -> float:
    """``LORAREG_LEASE_SECONDS``: how long a writer that stops renewing keeps its blobs."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise LoraregError(f"{ENV} must be a positive number of seconds, not {raw!r}",
                           hint=f"unset it for the default ({DEFAULT_SECONDS:.0f} s), or set e.g. {ENV}=600")
    return value


def _lost() -> LeaseLostError:
    return LeaseLostError("the writer's lease expired before its rows were committed")


@contextmanager
def _transaction(db: "Engine", gc_lock: str | None) -> Iterator["Session"]:
    """A session whose transaction takes the gc lock: "shared" or "exclusive".  On SQLite every
    such transaction is a writer's (BEGIN IMMEDIATE), so they are one at a time anyway."""
    from sqlmodel import Session

    from lorareg.registry.db import WRITER

    with Session(db.execution_options(**{WRITER: True}), expire_on_commit=False) as session:
        _lock_gc(session, gc_lock)
        yield session


def write_session(ctx: "Context"):
    """A session that reads and then writes (rm, gc's evictions): on SQLite it takes the write
    lock at BEGIN, so what it read cannot be stale when it writes ("database is locked")."""
    return _transaction(ctx.db, None)


def _lock_gc(session: "Session", mode: str | None) -> None:
    from sqlalchemy import text

    if mode is None or session.get_bind().dialect.name != "postgresql":
        session.connection()  # SQLite: BEGIN IMMEDIATE now, not at the first statement
        return
    fn = "pg_advisory_xact_lock_shared" if mode == "shared" else "pg_advisory_xact_lock"
    session.execute(text(f"SELECT {fn}(:key)"), {"key": GC_KEY})


def _now(session: "Session") -> datetime:
    from sqlalchemy import text

    from lorareg.registry.models import utcnow

    if session.get_bind().dialect.name == "postgresql":
        return session.execute(text("SELECT clock_timestamp()")).scalar_one()
    return utcnow()


def _renew(session: "Session", lease_id: int, seconds: float) -> bool:
    """Push an unexpired lease's expiry ahead; False when it is gone or has lapsed (a lapsed
    lease never comes back: a gc may have judged it expired and removed its blobs)."""
    from sqlalchemy import update

    from lorareg.registry import models as m

    now = _now(session)
    done = session.execute(update(m.Lease).where(m.Lease.id == lease_id, m.Lease.expires_at > now)
                           .values(expires_at=now + timedelta(seconds=seconds)))
    return done.rowcount == 1


@dataclass(eq=False)
class Lease:
    """One writer's lease; ``claim`` is what the blob store calls before it relies on a blob."""

    id: int
    owner: str
    seconds: float
    db: "Engine"
    claimed: set[str] = field(default_factory=set)
    lost: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, hexdigest: str) -> None:
        if self.lost.is_set():
            raise _lost()
        if hexdigest in self.claimed or _in_rows_transaction(self):
            return
        from sqlalchemy.dialects import postgresql, sqlite

        from lorareg.registry import models as m

        with _transaction(self.db, "shared") as session:
            if not _renew(session, self.id, self.seconds):
                self.lost.set()
                raise _lost()
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            session.execute(insert(m.PendingBlob).values(lease_id=self.id, sha256=hexdigest).on_conflict_do_nothing())
            session.commit()
        with self._lock:
            self.claimed.add(hexdigest)


@dataclass
class _Held:
    lease: Lease
    count: int
    stop: threading.Event
    heartbeat: threading.Thread
    previous_claim: Callable[[str], None] | None


_active: dict[int, _Held] = {}  # id(Context) -> its lease: one per Context, however nested
_active_lock = threading.Lock()
_local = threading.local()  # the rows transaction this thread is in (set by assert_held)


def _in_rows_transaction(lease: Lease) -> bool:
    session = getattr(_local, "session", None)
    return session is not None and getattr(_local, "lease", None) is lease and session.in_transaction()


def _heartbeat(lease: Lease, stop: threading.Event) -> None:
    while not stop.wait(lease.seconds / 3):
        try:
            with _transaction(lease.db, None) as session:
                renewed = _renew(session, lease.id, lease.seconds)
                session.commit()
        except Exception:  # the database is busy or unreachable: try again at the next beat
            continue
        if not renewed:
            lease.lost.set()
            return


def _open(ctx: "Context") -> _Held:
    from lorareg.registry import events
    from lorareg.registry import models as m

    seconds = lease_seconds()
    owner = f"{events.current_user()}@{socket.gethostname()}:{os.getpid()}"[:256]
    with _transaction(ctx.db, None) as session:
        now = _now(session)
        row = m.Lease(owner=owner, created_at=now, expires_at=now + timedelta(seconds=seconds))
        session.add(row)
        session.commit()
    lease = Lease(id=row.id, owner=owner, seconds=seconds, db=ctx.db)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lease, stop), name=f"lorareg-lease-{row.id}", daemon=True)
    held = _Held(lease=lease, count=1, stop=stop, heartbeat=beat, previous_claim=ctx.blobs.claim)
    ctx.blobs.claim = lease.claim
    beat.start()
    return held


def _close(ctx: "Context", held: _Held) -> None:
    from sqlalchemy import delete

    from lorareg.registry import models as m

    held.stop.set()
    held.heartbeat.join(timeout=5)
    ctx.blobs.claim = held.previous_claim
    with _transaction(ctx.db, None) as session:
        session.execute(delete(m.Lease).where(m.Lease.id == held.lease.id))  # pending rows: cascade
        session.commit()


@contextmanager
def writing(ctx: "Context") -> Iterator[Lease]:
    """Held from before the first blob a writer stores to after the commit of its rows.
    Re-entrant per Context: nested uses share one lease."""
    with _active_lock:
        held = _active.get(id(ctx))
        if held is not None:
            held.count += 1
        else:
            held = _active[id(ctx)] = _open(ctx)
    failed = False
    try:
        yield held.lease
    except BaseException:
        failed = True
        raise
    finally:
        with _active_lock:
            held.count -= 1
            last = held.count == 0
            if last:
                del _active[id(ctx)]
        if last:
            try:
                _close(ctx, held)
            except Exception:
                # A lease that could not be deleted lapses on its own; the writer's own error
                # (or a lost lease) is what the user needs to see, not this one.
                if not failed and not held.lost.is_set():
                    raise


def assert_held(session: "Session", ctx: "Context") -> None:
    """At the start of a writer's rows transaction: raise LeaseLostError unless this context's
    lease is still there and unexpired, and hold gc off until the transaction ends (SQLite: the
    transaction is BEGIN IMMEDIATE already; PostgreSQL: the gc lock, shared)."""
    from lorareg.registry import models as m

    held = _active.get(id(ctx))
    if held is None:
        raise RuntimeError("assert_held outside leases.writing(ctx)")
    _lock_gc(session, "shared")
    row = session.get(m.Lease, held.lease.id)
    if held.lease.lost.is_set() or row is None or _aware(row.expires_at) <= _now(session):
        held.lease.lost.set()
        raise _lost()
    _local.session, _local.lease = session, held.lease


def _aware(value: datetime) -> datetime:
    from datetime import timezone

    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass
class Collection:
    """What ``collecting`` hands gc and rm: its session and the leases it found lapsed."""

    session: "Session"
    now: datetime
    leases_expired: int

    def pending(self) -> set[str]:
        """Blobs live leases rely on before any committed row names them."""
        from sqlmodel import select

        from lorareg.registry import models as m

        rows = self.session.exec(select(m.PendingBlob.sha256).join(m.Lease, m.Lease.id == m.PendingBlob.lease_id)
                                 .where(m.Lease.expires_at > self.now)).all()
        return set(rows)


@contextmanager
def collecting(ctx: "Context", *, dry_run: bool = False) -> Iterator[Collection]:
    """One transaction holding the gc lock exclusively: no claim and no rows transaction runs
    meanwhile.  Lapsed leases are deleted first (counted only, on a dry run); the caller reads
    the protected set (``referenced | pending()``) and deletes blobs inside, then it commits."""
    from sqlalchemy import delete, func
    from sqlmodel import select

    from lorareg.registry import models as m

    with _transaction(ctx.db, "exclusive") as session:
        now = _now(session)
        lapsed = m.Lease.expires_at <= now
        if dry_run:
            expired = session.exec(select(func.count()).select_from(m.Lease).where(lapsed)).one()
        else:
            expired = session.execute(delete(m.Lease).where(lapsed)).rowcount
        yield Collection(session=session, now=now, leases_expired=expired)
        if dry_run:
            session.rollback()
        else:
            session.commit()
