"""Alembic environment and revisions, shipped inside the wheel as ``lorareg.migrations``."""

from __future__ import annotations

from pathlib import Path

SCRIPT_LOCATION = Path(__file__).parent
# The newest revision this lorareg knows.  Kept as a constant so opening an up-to-date
# registry does not have to load alembic; tests/test_migrations.py checks it is the head.
HEAD = "0009"
