"""removals and renames (issue 14)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:50:00

``lorareg rm`` keeps a removed version's row (its number is never given out again, and
lineage that points at it stays whole) and marks it with ``versions.removed_at``; its bytes
are evicted.  Existing versions are all live, so the new column starts NULL everywhere.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('removed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_column('removed_at')
