"""The recipe: everything needed to rebuild a merged version, as one typed, frozen value.

The registry stores it as canonical JSON (``to_json``) and the engine runs it.  Its
*identity* (what makes two merge requests "the same", ``digest()``) is its inputs by
digest and its parameters; references, library versions and the lorareg version are kept
for the reader and for rebuild reports but do not change it.  ``schema`` names the JSON
layout; revision 0002 converted every recipe stored before it to this one."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, Mapping

from lorareg.errors import LoraregError

SCHEMA = 2
ENGINE_VERSION = "lorareg-merge/1"
OUTPUTS = ("model", "cat", "svd")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ADAPTER_DTYPES = ("float32", "base")
DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
# Every recipe recorded before schema 2 carried these two keys at its top level, whatever the
# method.  The identity keeps them, so those recipes keep their digests: the digest is written
# into merged shards' metadata and is the key that finds an identical earlier merge.
_LEGACY_PARAMS = {"density": None, "majority_sign_method": "total"}

Output = Literal["model", "cat", "svd"]


@dataclass(frozen=True)
class InputRef:
    """A registered version used as an input, by reference and by the digest that was read."""

    ref: str
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "digest": self.digest}


@dataclass(frozen=True)
class AdapterRef:
    ref: str
    digest: str
    config_digest: str
    weight: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "digest": self.digest, "config_digest": self.config_digest, "weight": self.weight}


@dataclass(frozen=True)
class Subtraction:
    """How a version made by ``rollback --strategy subtract`` came about: ``removed``'s delta
    taken out of the merged weights of ``source`` (the base may no longer be available)."""

    source: InputRef
    removed: AdapterRef

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source.to_json(), "removed": self.removed.to_json()}


def library_versions(*extra: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "peft", "safetensors", "transformers", *extra):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "missing"
    return out


def lorareg_version() -> str:
    from lorareg import __version__

    return __version__


def resolve_dtype(dtype: str, base_dtype: str) -> str:
    """``auto`` -> the base's dtype (from its safetensors dtype name, e.g. BF16)."""
    if dtype != "auto":
        return dtype
    return DTYPE_NAMES.get(base_dtype, "float32")


@dataclass(frozen=True)
class Recipe:
    base: InputRef
    adapters: tuple[AdapterRef, ...]
    method: str
    dtype: str  # resolved: bfloat16 | float16 | float32
    params: Mapping[str, Any] = field(default_factory=dict)  # the method's declared parameters, resolved
    seed: int = 0
    adapter_dtype: str = "float32"
    output: Output = "model"
    rank: int | None = None  # for output "svd"
    max_shard_size: int = 5 * 2**30
    allow_base_mismatch: bool = False
    subtracted: Subtraction | None = None
    # Issue 11's fields: each is part of the identity only when set, so every recipe made
    # before them keeps its digest (and a merge that uses none of them is that same recipe).
    allow_noop: bool = False  # an untrained adapter, or deltas that round away, merged anyway
    tokenizer_from: str | None = None  # the input (an adapter's ref, or the base's) chosen for side files
    # side-file group -> the adapter it was taken from (ref), for groups not from the base;
    # None: every group from the base (and every recipe recorded before side files moved)
    side_files: Mapping[str, str] | None = None
    # QLoRA: {"quant_type": "nf4"|"fp4", "double_quant": bool, "blocksize": int}; the base's
    # linear layers go through bitsandbytes' quantize/dequantize before the merge
    base_quantization: Mapping[str, Any] | None = None
    engine: str = ENGINE_VERSION
    lorareg_version: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)  # torch, peft, ... that ran it

    def __post_init__(self) -> None:
        clash = set(self.params) & {f for f in self.__dataclass_fields__ if f != "params"}
        if clash:
            raise LoraregError(f"method parameter {sorted(clash)[0]!r} has the name of a recipe field",
                               hint="rename the parameter in the method's declaration")
        object.__setattr__(self, "adapters", tuple(self.adapters))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "versions", MappingProxyType(dict(self.versions)))
        if self.side_files is not None:
            object.__setattr__(self, "side_files", MappingProxyType(dict(self.side_files)))
        if self.base_quantization is not None:
            object.__setattr__(self, "base_quantization", MappingProxyType(dict(self.base_quantization)))

    # -- identity ---------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "engine": self.engine,
            "base": {"digest": self.base.digest},
            "adapters": [{"digest": a.digest, "config_digest": a.config_digest, "weight": a.weight}
                         for a in self.adapters],
            "method": self.method, **_LEGACY_PARAMS, **self.params, "seed": self.seed, "dtype": self.dtype,
            "adapter_dtype": self.adapter_dtype, "output": self.output, "rank": self.rank,
            "max_shard_size": self.max_shard_size, "allow_base_mismatch": self.allow_base_mismatch,
        }
        ident.update(self._optional_identity())
        if self.subtracted is not None:
            ident["derived"] = {"strategy": "subtract", "from": self.subtracted.source.to_json(),
                                "removed": self.subtracted.removed.to_json()}
        return ident

    def side_file_positions(self) -> dict[str, int]:
        """side-file group -> position of the adapter it comes from (the engine's form)."""
        refs = [a.ref for a in self.adapters]
        return {group: refs.index(ref) for group, ref in (self.side_files or {}).items()}

    def _optional_identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.allow_noop:
            out["allow_noop"] = True
        if self.tokenizer_from is not None:
            refs = [a.ref for a in self.adapters]
            out["tokenizer_from"] = refs.index(self.tokenizer_from) if self.tokenizer_from in refs else "base"
        if self.side_files:
            # by position, not by reference: references are not identity
            out["side_files"] = self.side_file_positions()
        if self.base_quantization is not None:
            out["base_quantization"] = dict(self.base_quantization)
        return out

    def optional_json(self) -> dict[str, Any]:
        """The fields above as stored: only those that are set."""
        out: dict[str, Any] = {}
        if self.allow_noop:
            out["allow_noop"] = True
        if self.tokenizer_from is not None:
            out["tokenizer_from"] = self.tokenizer_from
        if self.side_files:
            out["side_files"] = dict(self.side_files)
        if self.base_quantization is not None:
            out["base_quantization"] = dict(self.base_quantization)
        return out

    def digest(self) -> str:
        from lorareg.store.digest import digest_json

        return digest_json(self.identity())

    # -- derived recipes ----------------------------------------------------------------------
    def without_adapter(self, index: int) -> "Recipe":
        """The same recipe without ``adapters[index]``, recorded with the libraries running now."""
        removed = self.adapters[index].ref
        # side files are chosen again from the adapters that remain (merging.with_side_files)
        extra = ["bitsandbytes"] if self.base_quantization is not None else []
        return replace(self, adapters=tuple(a for i, a in enumerate(self.adapters) if i != index),
                       subtracted=None, versions=library_versions(*extra), lorareg_version=lorareg_version(),
                       tokenizer_from=None if self.tokenizer_from == removed else self.tokenizer_from,
                       side_files=None)

    # -- storage ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "engine": self.engine, "base": self.base.to_json(),
            "adapters": [a.to_json() for a in self.adapters], "method": self.method, "params": dict(self.params),
            "seed": self.seed, "dtype": self.dtype, "adapter_dtype": self.adapter_dtype, "output": self.output,
            "rank": self.rank, "max_shard_size": self.max_shard_size,
            "allow_base_mismatch": self.allow_base_mismatch,
            "subtracted": None if self.subtracted is None else self.subtracted.to_json(),
            "lorareg_version": self.lorareg_version, "versions": dict(self.versions), **self.optional_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Recipe":
        if data.get("schema") != SCHEMA:
            raise LoraregError(f"recipe schema {data.get('schema')!r} is not {SCHEMA}",
                               hint="open the registry with this lorareg once (it upgrades stored recipes)")
        sub = data.get("subtracted")
        return cls(
            base=InputRef(**data["base"]), adapters=tuple(AdapterRef(**a) for a in data["adapters"]),
            method=data["method"], params=data.get("params") or {}, seed=int(data["seed"]), dtype=data["dtype"],
            adapter_dtype=data["adapter_dtype"], output=data["output"], rank=data.get("rank"),
            max_shard_size=int(data["max_shard_size"]), allow_base_mismatch=bool(data["allow_base_mismatch"]),
            subtracted=None if not sub else Subtraction(InputRef(**sub["source"]), AdapterRef(**sub["removed"])),
            allow_noop=bool(data.get("allow_noop", False)), tokenizer_from=data.get("tokenizer_from"),
            side_files=data.get("side_files") or None, base_quantization=data.get("base_quantization"),
            engine=data["engine"], lorareg_version=data.get("lorareg_version", ""),
            versions=data.get("versions") or {},
        )

    def to_text(self) -> str:
        """Canonical JSON: what the registry stores."""
        import json

        return json.dumps(self.to_json(), sort_keys=True)
