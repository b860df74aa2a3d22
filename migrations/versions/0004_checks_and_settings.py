"""checks and registry settings (issue 12)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 09:50:00

``checks``: every ``lorareg check`` of a merged version (what it measured, on which inputs,
with which libraries, passed or not).  ``settings``: registry-wide settings such as
``require-check``, which makes ``push`` and ``alias set`` refuse a merge without a passing
check.  Both tables are new, so existing registries upgrade without touching their data.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('checks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.Column('reference', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('dtype', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('max_abs_diff', sa.Float(), nullable=False),
    sa.Column('mean_abs_diff', sa.Float(), nullable=False),
    sa.Column('tolerance', sa.Float(), nullable=False),
    sa.Column('top1_agreement', sa.Float(), nullable=True),
    sa.Column('generation_agreement', sa.Float(), nullable=True),
    sa.Column('seed', sa.BigInteger(), nullable=True),
    sa.Column('prompts_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('numbers_json', sa.Text(), nullable=False),
    sa.Column('versions_json', sa.Text(), nullable=False),
    sa.Column('checked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('checked_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('checks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checks_version_id'), ['version_id'], unique=False)

    op.create_table('settings',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )


def downgrade() -> None:
    op.drop_table('settings')
    with op.batch_alter_table('checks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checks_version_id'))
    op.drop_table('checks')
