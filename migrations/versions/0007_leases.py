"""writer leases and their pending blobs (issue 13)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:00:00

Coordination between writers and ``gc`` moves from an ``flock`` in the blob folder (not
reliable on NFS, meaningless for object storage) into the database: ``leases`` holds one row
per writer between its first blob and the commit of its rows, kept alive by a heartbeat;
``pending_blobs`` the blobs each lease relies on before a committed row names them.  gc keeps
those and removes the leases that lapsed (their pending rows go with them, ON DELETE CASCADE).
Both tables are new and empty: existing registries upgrade without touching their data.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('leases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('leases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_leases_expires_at'), ['expires_at'], unique=False)

    op.create_table('pending_blobs',
    sa.Column('lease_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.ForeignKeyConstraint(['lease_id'], ['leases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('lease_id', 'sha256')
    )


def downgrade() -> None:
    op.drop_table('pending_blobs')
    with op.batch_alter_table('leases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_leases_expires_at'))
    op.drop_table('leases')
