"""Recipes: everything needed to rebuild a merged version, as a plain dict.

The *identity* of a recipe (what makes two merge requests "the same") is its inputs by
digest and its parameters; references, library versions and the lorareg version are
recorded for the reader and for rebuild reports but do not change identity."""

from __future__ import annotations

from typing import Any

ENGINE_VERSION = "lorareg-merge/1"
DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
IDENTITY_EXCLUDES = ("versions", "lorareg_version")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "peft", "safetensors", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "missing"
    return out


def identity(recipe: dict[str, Any]) -> dict[str, Any]:
    ident = {k: v for k, v in recipe.items() if k not in IDENTITY_EXCLUDES}
    ident["base"] = {"digest": recipe["base"]["digest"]}
    ident["adapters"] = [{"digest": a["digest"], "config_digest": a["config_digest"], "weight": a["weight"]}
                         for a in recipe["adapters"]]
    return ident


def recipe_digest(recipe: dict[str, Any]) -> str:
    from lorareg.store.digest import digest_json

    return digest_json(identity(recipe))


def resolve_dtype(dtype: str, base_dtype: str) -> str:
    if dtype != "auto":
        return dtype
    return DTYPE_NAMES.get(base_dtype, "float32")


def build(*, base: dict, adapters: list[dict], method: str, density: float | None, majority_sign_method: str,
          seed: int, dtype: str, adapter_dtype: str, output: str, rank: int | None, max_shard_size: int,
          allow_base_mismatch: bool) -> dict[str, Any]:
    from lorareg import __version__

    return {
        "engine": ENGINE_VERSION,
        "base": base,
        "adapters": adapters,
        "method": method,
        "density": density,
        "majority_sign_method": majority_sign_method,
        "seed": seed,
        "dtype": dtype,
        "adapter_dtype": adapter_dtype,
        "output": output,
        "rank": rank,
        "max_shard_size": max_shard_size,
        "allow_base_mismatch": allow_base_mismatch,
        "lorareg_version": __version__,
        "versions": library_versions(),
    }
