"""whole-model digests (issue 10)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:50:00

Reserved in the chain so that this work lands without re-chaining; it changes nothing
until that work fills it in.
"""

from __future__ import annotations

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
