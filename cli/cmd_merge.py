"""merge, export, rebuild, rollback, lineage, diff, gc."""

from __future__ import annotations

COMMANDS: list = []
