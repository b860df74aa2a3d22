"""one index for listing and counting versions (issue 16)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 15:00:00

``ls`` on a terminal reads a page newest first and then says how many versions are left
("N more").  The page was cheap (``ix_versions_created_at``) but the count read every row of
``versions`` to learn ``removed_at`` (a removed version is listed only while something was made
from it): 29 ms at 100,000 versions, and as much again past a cursor (``ls --after REF``).
``ix_versions_listed`` on (created_at, removed_at, kind) answers the page, the cursor's range
and both counts from the index alone (4 to 9 ms at 100,000, SQLite 3.40), and ``ls KIND``
counts without the table too.  Its leading column is created_at, so it replaces
``ix_versions_created_at``.  Indexes only: no row changes.
"""

from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_versions_listed', 'versions', ['created_at', 'removed_at', 'kind'], unique=False)
    op.drop_index('ix_versions_created_at', table_name='versions')


def downgrade() -> None:
    op.create_index('ix_versions_created_at', 'versions', ['created_at'], unique=False)
    op.drop_index('ix_versions_listed', table_name='versions')
