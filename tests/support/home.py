"""What a LORAREG_HOME holds, for checking that a refused command left it untouched."""

from __future__ import annotations

from pathlib import Path


def snapshot_state(home: Path) -> dict:
    """Everything a failed command must leave untouched: rows per table, blob files, version folders."""
    import sqlite3

    out: dict = {"blobs": sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file() and "tmp" not in p.parts)}
    out["versions"] = sorted(str(p.relative_to(home)) for p in (home / "versions").rglob("*")) if (home / "versions").exists() else []
    db = home / "registry.db"
    if db.exists():
        con = sqlite3.connect(db)
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out["rows"] = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables if t != "events"}
        con.close()
    return out
