"""a recipe-only merge's weight shards have no file sha256 (issue 16)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 15:10:00

``merge --keep recipe`` keeps a version's digest, not its bytes.  Its weight shards were hashed
twice all the same: each tensor for the manifest (the digest, which rebuilds are checked
against) and each whole shard for a file sha256 nothing could use, since no blob by that name
is kept and giving the version its files back (``rebuild --keep-files``, ``push``) hashes the
written shards anew.  That second pass was a third of the command's CPU on 2 cores.  From
now on those rows record the shard's size and ``sha256`` NULL; rows written before keep theirs.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.alter_column('sha256', existing_type=sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)


def downgrade() -> None:
    # The NULLs are the shards of recipe-only versions: an empty sha256 says the same to the
    # old code, which never reads a recipe-only version's shard rows (it rebuilds them).
    op.execute(sa.text("UPDATE files SET sha256 = '' WHERE sha256 IS NULL"))
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.alter_column('sha256', existing_type=sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False)
