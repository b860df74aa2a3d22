"""The last lines of a test server's log, for a failure message."""

from __future__ import annotations

from pathlib import Path


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"
