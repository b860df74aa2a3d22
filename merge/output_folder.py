"""The merged model folder around the weights: config, tokenizer files, model card, hashes.

The folder must load with plain ``AutoModel*.from_pretrained`` (no lorareg, no PEFT), so
config.json keeps the base's content with only the dtype and the tie flag changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorareg.store.digest import FileDigest, file_sha256
from lorareg.store.pickles import is_pickle

__all__ = ["MergeOutput", "copy_side_files", "default_model_card", "hash_files", "write_config"]

# Weights (pickles: see is_pickle) and files the merge itself writes; everything else at the
# base's top level (tokenizer, generation config, chat template, ...) is copied as is.
_SKIP_SUFFIXES = (
    ".safetensors", ".h5", ".msgpack", ".gguf", ".onnx", ".ot",
    ".safetensors.index.json", ".bin.index.json", ".incomplete", ".lock",
)
_SKIP_NAMES = {"config.json", "README.md", "adapter_config.json"}


@dataclass(frozen=True)
class MergeOutput:
    path: Path
    digest: str  # "sha256:<hex>" of the tensor manifest
    files: dict[str, FileDigest]  # every file in the folder, README and config included
    tensors_total: int
    tensors_changed: int  # tensors the adapters change by construction
    dtype: str
    notes: tuple[str, ...]
    tensors_differing: int = 0  # tensors whose bytes differ from the base's (in the output dtype)
    side_files: Mapping[str, int] | None = None  # side-file group -> adapter index (absent: the base's)


def write_config(base_config: dict[str, Any], dest: Path, *, dtype: str, untied: bool,
                 vocab_size: int | None = None) -> None:
    config = dict(base_config)
    if vocab_size is not None:
        # where resize_token_embeddings writes it: the text config of a composite model
        if isinstance(config.get("text_config"), dict) and "vocab_size" in config["text_config"]:
            config["text_config"] = {**config["text_config"], "vocab_size": vocab_size}
        else:
            config["vocab_size"] = vocab_size
    config["dtype"] = dtype  # transformers >= 4.56 name
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    if untied:
        config["tie_word_embeddings"] = False
        if isinstance(config.get("text_config"), dict) and "tie_word_embeddings" in config["text_config"]:
            config["text_config"] = {**config["text_config"], "tie_word_embeddings": False}
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in _SKIP_NAMES or name.endswith(_SKIP_SUFFIXES) or is_pickle(name)


def copy_side_files(base: Path, dest: Path, *, adapters: Sequence[Path] = (),
                    chosen: Mapping[str, int] | None = None) -> dict[str, str]:
    """Copy the base's top-level tokenizer/generation files, and the groups ``chosen`` takes
    from adapters instead (side_files.py); returns file -> "base" or the adapter's index."""
    from lorareg.merge.side_files import copy_side_files as copy_groups

    return copy_groups(base, adapters, chosen or {}, dest, skip=_skipped)


def default_model_card(*, base: Path, adapters: list[Path], method: str, recipe_digest: str) -> str:
    lines = [
        "---",
        "base_model_relation: merge",
        "library_name: transformers",
        "tags:",
        "- lora",
        "- merge",
        "- lorareg",
        "---",
        "",
        "# Merged model",
        "",
        f"Base model `{Path(base).name}` merged with {len(adapters)} LoRA adapter(s) by lorareg ({method}).",
        "",
    ]
    lines += [f"- adapter `{Path(a).name}`" for a in adapters]
    if recipe_digest:
        lines += ["", f"Recipe digest: `{recipe_digest}`"]
    return "\n".join(lines) + "\n"


def hash_files(folder: Path, known: dict[str, FileDigest]) -> dict[str, FileDigest]:
    """FileDigest for every regular file in ``folder`` (already hashed ones reused)."""
    out: dict[str, FileDigest] = {}
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        out[rel] = known.get(rel) or FileDigest(sha256=file_sha256(path), size=path.stat().st_size)
    return out
