"""whole-model digests: weights and the files that define behaviour

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:50:00

Until this revision a version's digest covered its tensors only.  Now it names the whole
model (lorareg.store.model_digest): the tensor manifest digest -- kept as ``weights_digest``,
which is exactly the old digest, so no tensor is hashed again -- plus the config, generation
config, tokenizer and chat template files.  Those files are small and read back from the
blob store (or the referenced folder, after checking each against its recorded sha256).

- A referenced folder that no longer holds its registered files is marked
  ``digest_state = 'reference-changed'`` and keeps its old digest: it is not silently rehashed.
- A merge kept as recipe only has no bytes to read: ``digest_state = 'pending'``; it is
  compared by its weights digest when rebuilt.
- Recipes name their inputs by digest: every recipe is rewritten with its inputs' new digests,
  and its recipe digest recomputed; content digests (the dedup keys) are recomputed too.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

versions = sa.table('versions', sa.column('id', sa.Integer), sa.column('name', sa.String), sa.column('version', sa.Integer),
                    sa.column('kind', sa.String), sa.column('digest', sa.String), sa.column('weights_digest', sa.String),
                    sa.column('digest_state', sa.String), sa.column('content_digest', sa.String),
                    sa.column('stored', sa.Boolean))
files = sa.table('files', sa.column('version_id', sa.Integer), sa.column('path', sa.String), sa.column('sha256', sa.String))
bases = sa.table('bases', sa.column('version_id', sa.Integer), sa.column('source', sa.String),
                 sa.column('source_path', sa.Text))
adapters = sa.table('adapters', sa.column('version_id', sa.Integer), sa.column('base_version_id', sa.Integer),
                    sa.column('config_digest', sa.String))
merges = sa.table('merges', sa.column('version_id', sa.Integer), sa.column('output', sa.String),
                  sa.column('recipe_digest', sa.String), sa.column('recipe_json', sa.Text))


def _identity(recipe: dict) -> dict:
    """The schema-2 recipe identity (lorareg.registry.recipe.Recipe.identity at this revision)."""
    ident = {"engine": recipe["engine"], "base": {"digest": recipe["base"]["digest"]},
             "adapters": [{"digest": a["digest"], "config_digest": a["config_digest"], "weight": a["weight"]}
                          for a in recipe["adapters"]],
             "method": recipe["method"], "density": None, "majority_sign_method": "total", **recipe["params"],
             "seed": recipe["seed"], "dtype": recipe["dtype"], "adapter_dtype": recipe["adapter_dtype"],
             "output": recipe["output"], "rank": recipe["rank"], "max_shard_size": recipe["max_shard_size"],
             "allow_base_mismatch": recipe["allow_base_mismatch"]}
    if recipe.get("subtracted"):
        ident["derived"] = {"strategy": "subtract", "from": recipe["subtracted"]["source"],
                            "removed": recipe["subtracted"]["removed"]}
    return ident


def _blob(blob_root: Path, sha: str) -> Path:
    return blob_root / "sha256" / sha[:2] / sha[2:]


def _read(version_files: dict[str, str], names: list[str], where) -> dict[str, bytes] | None:
    """Each defining file's bytes, checked against its recorded sha256; None if any is not there."""
    import hashlib

    out = {}
    for rel in names:
        try:
            data = where(rel).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != version_files[rel]:
            return None
        out[rel] = data
    return out


def upgrade() -> None:
    from lorareg.store.digest import digest_json
    from lorareg.store.model_digest import defining_files, file_identity, model_digest

    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('weights_digest', sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column('digest_state', sa.String(length=32), nullable=True))
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mtime_ns', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('inode', sa.BigInteger(), nullable=True))

    conn = op.get_bind()
    blob_root = context.config.attributes.get("blobs")
    rows = conn.execute(sa.select(versions.c.id, versions.c.name, versions.c.version, versions.c.kind,
                                  versions.c.digest, versions.c.stored).order_by(versions.c.id)).all()
    if rows and blob_root is None:
        raise RuntimeError("migration 0003 needs the blob folder (pass it as config.attributes['blobs'])")
    by_id = {r.id: r for r in rows}
    new_digest: dict[int, str] = {}
    state: dict[int, str | None] = {}
    base_info = {b.version_id: b for b in conn.execute(sa.select(bases)).all()}
    adapter_info = {a.version_id: a for a in conn.execute(sa.select(adapters)).all()}
    merge_info = {mg.version_id: mg for mg in conn.execute(sa.select(merges)).all()}

    def whole(row, extra=None) -> str | None:
        recorded = {f.path: f.sha256 for f in conn.execute(sa.select(files.c.path, files.c.sha256)
                                                            .where(files.c.version_id == row.id)).all()}
        names = defining_files(recorded)
        if row.stored:
            data = _read(recorded, names, lambda rel: _blob(Path(blob_root), recorded[rel]))
        elif row.kind == "base":
            data = _read(recorded, names, lambda rel: Path(base_info[row.id].source_path) / rel)
        else:
            data = None
        if data is None:
            return None
        return model_digest(row.digest, {rel: file_identity(rel, data[rel]) for rel in names}, extra)

    def adapter_output_config(row) -> dict | None:
        from lorareg.merge.adapter_config import summarize

        recorded = dict(conn.execute(sa.select(files.c.path, files.c.sha256)
                                     .where(files.c.version_id == row.id)).all())
        if not row.stored or "adapter_config.json" not in recorded:
            return None
        cfg = json.loads(_blob(Path(blob_root), recorded["adapter_config.json"]).read_text())
        return {"adapter_config": digest_json(summarize(Path(row.name), cfg).normalized_config)}

    ref_to_id = {f"{r.name}@{r.version}": r.id for r in rows}
    for row in rows:  # bases and adapters first: recipes need their new digests
        if row.kind == "merge":
            continue
        extra = {"adapter_config": adapter_info[row.id].config_digest} if row.kind == "adapter" else None
        digest = whole(row, extra)
        new_digest[row.id] = digest or row.digest
        state[row.id] = None if digest else "reference-changed"
    for row in rows:  # merges, in creation order: a subtraction's source comes before it
        if row.kind != "merge":
            continue
        mg = merge_info[row.id]
        recipe = json.loads(mg.recipe_json)

        def renamed(item: dict) -> dict:
            return {**item, "digest": new_digest.get(ref_to_id.get(item["ref"]), item["digest"])}

        recipe["base"] = renamed(recipe["base"])
        recipe["adapters"] = [renamed(a) for a in recipe["adapters"]]
        if recipe.get("subtracted"):
            recipe["subtracted"] = {"source": renamed(recipe["subtracted"]["source"]),
                                    "removed": renamed(recipe["subtracted"]["removed"])}
        recipe_digest = digest_json(_identity(recipe))
        extra = adapter_output_config(row) if mg.output == "adapter" else None
        digest = whole(row, extra) if (mg.output != "adapter" or extra) else None
        new_digest[row.id] = digest or row.digest
        state[row.id] = None if digest else "pending"
        conn.execute(merges.update().where(merges.c.version_id == row.id).values(
            recipe_json=json.dumps(recipe, sort_keys=True), recipe_digest=recipe_digest))
        conn.execute(versions.update().where(versions.c.id == row.id).values(
            content_digest=digest_json({"digest": new_digest[row.id], "recipe": recipe_digest})))
    for row in rows:
        values = {"weights_digest": row.digest, "digest": new_digest[row.id], "digest_state": state[row.id]}
        if row.kind == "base":
            b = base_info[row.id]
            values["content_digest"] = digest_json({"digest": new_digest[row.id], "source": b.source,
                                                    "path": b.source_path})
        elif row.kind == "adapter":
            values["content_digest"] = digest_json({"digest": new_digest[row.id],
                                                    "base": new_digest[adapter_info[row.id].base_version_id]})
        conn.execute(versions.update().where(versions.c.id == row.id).values(**values))
    del by_id


def downgrade() -> None:
    raise NotImplementedError("digests cannot go back to tensors only; restore the database from a backup")
