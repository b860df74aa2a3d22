"""indexes for large registries (issue 16)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 11:00:00

Reads that must not scan the versions or events tables on a registry of 100,000 versions:
``lineage --down`` and ``ls`` (whether a removed version is still listed) find the versions
whose parent is a given one (``versions.parent_id``); ``ls`` on a terminal pages newest first
(``versions.created_at``); ``show`` and every listed row find a version's aliases
(``aliases.version_id``); ``log NAME`` finds a name's events (``events.ref``).  Indexes only:
no row changes.
"""

from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

INDEXES = [  # (name, table, column): the names SQLModel gives ``Field(index=True)``
    ('ix_versions_parent_id', 'versions', 'parent_id'),
    ('ix_versions_created_at', 'versions', 'created_at'),
    ('ix_aliases_version_id', 'aliases', 'version_id'),
    ('ix_events_ref', 'events', 'ref'),
]


def upgrade() -> None:
    for name, table, column in INDEXES:
        op.create_index(name, table, [column], unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
