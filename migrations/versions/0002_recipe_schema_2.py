"""recipes as schema 2; what a merge produced kept apart from its recipe

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:30:00

Recipes recorded before this revision are flat dicts: method parameters (``density``,
``majority_sign_method``) at the top level, a subtraction as ``derived``, and results of the
run (``notes``, ``tensors_changed``, ...) mixed in.  Each becomes a schema-2 recipe (the
parameters in ``params``, the subtraction as ``subtracted``) and the results move to the new
``merges.outcome_json`` column.  ``recipe_digest`` is not recomputed: schema 2's identity
gives the same digest for every recipe written before it.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

OUTCOME_KEYS = ("notes", "tensors_changed", "tensors_total", "module_errors", "output_rank", "subtract_deviation")
SIGN_METHODS = ("ties", "dare_ties")  # the methods that elect a sign


def to_schema_2(old: dict) -> tuple[dict, dict]:
    """(recipe, outcome) from a recipe stored by revision 0001."""
    outcome = {k: old[k] for k in OUTCOME_KEYS if k in old}
    params = {}
    if old.get("density") is not None:
        params["density"] = old["density"]
    sign = old.get("majority_sign_method", "total")
    if old.get("method") in SIGN_METHODS or sign != "total":
        params["majority_sign_method"] = sign
    derived = old.get("derived")
    subtracted = {"source": derived["from"], "removed": derived["removed"]} if derived else None
    recipe = {
        "schema": 2, "engine": old["engine"], "base": old["base"], "adapters": old["adapters"],
        "method": old["method"], "params": params, "seed": old["seed"], "dtype": old["dtype"],
        "adapter_dtype": old["adapter_dtype"], "output": old["output"], "rank": old.get("rank"),
        "max_shard_size": old["max_shard_size"], "allow_base_mismatch": old.get("allow_base_mismatch", False),
        "subtracted": subtracted, "lorareg_version": old.get("lorareg_version", ""),
        "versions": old.get("versions", {}),
    }
    return recipe, outcome


def upgrade() -> None:
    with op.batch_alter_table('merges', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outcome_json', sa.Text(), nullable=False, server_default='{}'))
    conn = op.get_bind()
    merges = sa.table('merges', sa.column('version_id', sa.Integer), sa.column('recipe_json', sa.Text),
                      sa.column('outcome_json', sa.Text))
    for version_id, text in conn.execute(sa.select(merges.c.version_id, merges.c.recipe_json)).all():
        old = json.loads(text)
        if old.get("schema") == 2:
            continue
        recipe, outcome = to_schema_2(old)
        conn.execute(merges.update().where(merges.c.version_id == version_id).values(
            recipe_json=json.dumps(recipe, sort_keys=True), outcome_json=json.dumps(outcome, sort_keys=True)))


def downgrade() -> None:
    raise NotImplementedError("recipes cannot go back to schema 1; restore the database from a backup")
