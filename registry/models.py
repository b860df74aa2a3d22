"""SQLModel tables.  The schema changes only through alembic revisions in migrations/.

One row per *name* (``artifacts``) fixes the kind a name belongs to; one row per *version*
(``versions``) carries what every kind shares (digest, size, parent, whether its bytes are
in the store); kind-specific facts live in ``bases``, ``adapters`` and ``merges`` keyed by
the version id.  ``UNIQUE(name, version)`` is what makes version numbers race-free: two
writers computing the same next number cannot both commit.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"

    name: str = Field(primary_key=True, max_length=128)
    kind: str = Field(max_length=16)  # base | adapter | merge
    created_at: datetime = Field(default_factory=utcnow)


class Version(SQLModel, table=True):
    __tablename__ = "versions"
    # ls: a page newest first, and how many are left, from the index alone (migration 0008)
    __table_args__ = (UniqueConstraint("name", "version", name="uq_versions_name_version"),
                      Index("ix_versions_listed", "created_at", "removed_at", "kind"))

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(foreign_key="artifacts.name", index=True, max_length=128)
    version: int
    kind: str = Field(max_length=16)
    digest: str = Field(index=True, max_length=80)  # the whole model: weights + defining files "sha256:..."
    weights_digest: Optional[str] = Field(default=None, max_length=80)  # the tensor manifest alone
    # None, or "pending": the whole-model digest is computed when the version is next rebuilt
    # (a recipe-only merge at the 0003 upgrade), or "reference-changed": the referenced folder
    # no longer held the registered bytes at the upgrade, so only the weights digest is known.
    digest_state: Optional[str] = Field(default=None, max_length=32)
    content_digest: str = Field(max_length=80)  # what makes two registrations the same (dedup key)
    manifest_sha256: Optional[str] = Field(default=None, max_length=64)  # blob of the manifest
    size_bytes: int = Field(default=0, sa_type=BigInteger)
    stored: bool = True  # bytes live in the blob store (False: reference, or recipe only)
    parent_id: Optional[int] = Field(default=None, foreign_key="versions.id", index=True)
    message: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)  # indexed by ix_versions_listed
    created_by: str = Field(default="", max_length=128)
    # ``lorareg rm``: the row stays (its number is never reused, lineage through it stays whole)
    # and its bytes are evicted; set when it was removed.
    removed_at: Optional[datetime] = Field(default=None)


class FileRow(SQLModel, table=True):
    __tablename__ = "files"

    version_id: int = Field(foreign_key="versions.id", primary_key=True)
    path: str = Field(primary_key=True, max_length=512)
    # None: a weight shard of a version kept as recipe only (hashed per tensor, never kept:
    # migration 0009); it gets its sha256 when the version gets its files back.
    sha256: Optional[str] = Field(default=None, index=True, max_length=64)
    size: int = Field(sa_type=BigInteger)
    # A referenced file's stat when it was last hashed: the fast path that confirms it unchanged.
    mtime_ns: Optional[int] = Field(default=None, sa_type=BigInteger)
    inode: Optional[int] = Field(default=None, sa_type=BigInteger)


class Base(SQLModel, table=True):
    __tablename__ = "bases"

    version_id: int = Field(foreign_key="versions.id", primary_key=True)
    source: str = Field(max_length=16)  # store | reference | hub
    source_path: Optional[str] = Field(default=None, sa_column=Column(Text))
    hub_repo: Optional[str] = Field(default=None, max_length=256)
    hub_revision: Optional[str] = Field(default=None, max_length=256)
    hub_commit: Optional[str] = Field(default=None, max_length=64)
    architecture: str = Field(default="", max_length=128)
    dtype: str = Field(default="", max_length=16)
    param_count: int = Field(default=0, sa_type=BigInteger)
    summary_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class Adapter(SQLModel, table=True):
    __tablename__ = "adapters"

    version_id: int = Field(foreign_key="versions.id", primary_key=True)
    base_version_id: int = Field(foreign_key="versions.id", index=True)
    config_digest: str = Field(max_length=80)
    r: int = 0
    lora_alpha: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    hub_repo: Optional[str] = Field(default=None, max_length=256)
    hub_commit: Optional[str] = Field(default=None, max_length=64)
    summary_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class Merge(SQLModel, table=True):
    __tablename__ = "merges"

    version_id: int = Field(foreign_key="versions.id", primary_key=True)
    base_version_id: int = Field(foreign_key="versions.id", index=True)
    method: str = Field(max_length=32)
    output: str = Field(default="model", max_length=16)  # model | adapter (cat/svd)
    seed: int = Field(default=0, sa_type=BigInteger)
    dtype: str = Field(max_length=16)
    recipe_digest: str = Field(index=True, max_length=80)
    recipe_json: str = Field(sa_column=Column(Text, nullable=False))  # schema-2 recipe, canonical JSON
    # What running the recipe reported (notes, tensors changed, subtraction deviation, ...).
    outcome_json: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))


class MergeInput(SQLModel, table=True):
    __tablename__ = "merge_inputs"

    merge_version_id: int = Field(foreign_key="versions.id", primary_key=True)
    position: int = Field(primary_key=True)
    adapter_version_id: int = Field(foreign_key="versions.id", index=True)
    weight: float


class Alias(SQLModel, table=True):
    __tablename__ = "aliases"

    name: str = Field(foreign_key="artifacts.name", primary_key=True, max_length=128)
    alias: str = Field(primary_key=True, max_length=64)
    version_id: int = Field(foreign_key="versions.id", index=True)
    updated_at: datetime = Field(default_factory=utcnow)


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_time", "time"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    time: datetime = Field(default_factory=utcnow)
    user: str = Field(default="", max_length=128)
    action: str = Field(max_length=32)
    ref: str = Field(default="", max_length=256, index=True)  # log NAME
    version_id: Optional[int] = Field(default=None, foreign_key="versions.id")
    args_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class Param(SQLModel, table=True):
    __tablename__ = "params"

    version_id: int = Field(foreign_key="versions.id", primary_key=True)
    key: str = Field(primary_key=True, max_length=256)
    value_json: str = Field(sa_column=Column(Text, nullable=False))


class Metric(SQLModel, table=True):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_version_key", "version_id", "key"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="versions.id")
    key: str = Field(max_length=256)
    value: float
    step: Optional[int] = None
    time: datetime = Field(default_factory=utcnow)


class Tag(SQLModel, table=True):
    __tablename__ = "tags"

    version_id: int = Field(foreign_key="versions.id", primary_key=True)
    key: str = Field(primary_key=True, max_length=256)
    value: str = Field(default="", sa_column=Column(Text, nullable=False))


class HubPush(SQLModel, table=True):
    __tablename__ = "hub_pushes"

    id: Optional[int] = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="versions.id", index=True)
    repo_id: str = Field(max_length=256)
    endpoint: str = Field(default="", max_length=256)
    branch: str = Field(default="main", max_length=256)
    tag: str = Field(max_length=128)
    commit_sha: str = Field(max_length=64)
    adapter_only: bool = False
    pushed_at: datetime = Field(default_factory=utcnow)


class Check(SQLModel, table=True):
    """A ``lorareg check`` of a merged version against the unmerged model its recipe describes:
    what it measured and exactly what it ran (inputs, libraries), passed or not."""

    __tablename__ = "checks"

    id: Optional[int] = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="versions.id", index=True)
    passed: bool
    reference: str = Field(max_length=32)  # peft-unmerged | float64-deltas
    dtype: str = Field(max_length=16)  # the dtype the merged output ran in
    max_abs_diff: float  # inf: the merged output was not finite
    mean_abs_diff: float
    tolerance: float
    top1_agreement: Optional[float] = None  # None for an encoder
    generation_agreement: Optional[float] = None  # None without --max-new-tokens
    seed: Optional[int] = Field(default=None, sa_type=BigInteger)  # drawn inputs
    prompts_sha256: Optional[str] = Field(default=None, max_length=64)  # --prompts FILE
    samples: int
    # The rest of what it measured (the rounding baseline, factor, per-rule results, inputs'
    # settings) and the library versions that ran it, as JSON.
    numbers_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    versions_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    checked_at: datetime = Field(default_factory=utcnow)
    checked_by: str = Field(default="", max_length=128)


class Lease(SQLModel, table=True):
    """A writer between its first blob and the commit of its rows (registry/leases.py): its
    heartbeat keeps ``expires_at`` ahead; gc removes it (and its pending blobs) once it lapses."""

    __tablename__ = "leases"

    id: Optional[int] = Field(default=None, primary_key=True)
    owner: str = Field(max_length=256)  # user@host:pid, for whoever reads the table
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)  # gc: "which leases lapsed"


class PendingBlob(SQLModel, table=True):
    """A blob a live lease relies on before any committed row names it: gc keeps it."""

    __tablename__ = "pending_blobs"

    lease_id: int = Field(foreign_key="leases.id", primary_key=True, ondelete="CASCADE")
    sha256: str = Field(primary_key=True, max_length=64)


class Setting(SQLModel, table=True):
    """Registry-wide settings (``lorareg config set KEY VALUE``), e.g. ``require-check``."""

    __tablename__ = "settings"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))
