"""The digest of a whole model: its weights and the files that define what it does.

Two models with the same tensors but another ``config.json`` (an ``rms_norm_eps``), another
tokenizer, chat template or ``generation_config.json`` behave differently, so they must not
share a digest.  The digest is the sha256 of canonical JSON naming the tensor manifest digest
(the *weights digest*, kept on its own for "same weights, different config") and a sha256 of
each defining file found at the checkpoint's top level:

- JSON configs are hashed as canonical JSON (sorted keys, no spaces) without the fields that
  only record who wrote them (``WRITER_FIELDS``), so re-saving with another transformers
  version keeps the digest;
- tokenizer vocabularies, merges and chat templates are hashed as bytes.

Not part of it: the model card (README.md), training state, weights files (the manifest
covers them), ``adapter_config.json`` (an adapter's callers pass its normalised form as
``extra``: a path in ``base_model_name_or_path`` changes nothing the adapter does).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CANONICAL_JSON", "RAW_FILES", "WRITER_FIELDS", "defining_files", "file_identity", "model_digest"]

CANONICAL_JSON = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
                  "video_preprocessor_config.json", "feature_extractor_config.json")
RAW_FILES = ("tokenizer.json", "tokenizer.model", "*.tiktoken", "vocab.json", "vocab.txt", "merges.txt",
             "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja", "additional_chat_templates/*.jinja")
# Fields that record the writer, not the model: the library version that saved the file,
# and the path or commit it was loaded from.
WRITER_FIELDS = frozenset({"transformers_version", "_name_or_path", "name_or_path", "_commit_hash"})


def is_defining(rel: str) -> bool:
    return rel in CANONICAL_JSON or any(fnmatch.fnmatchcase(rel, p) for p in RAW_FILES)


def defining_files(names: list[str] | Mapping[str, Any]) -> list[str]:
    """The relative names (sorted) among ``names`` that define behaviour."""
    return sorted(rel for rel in names if is_defining(rel))


def file_identity(rel: str, data: bytes) -> str:
    """The sha256 a defining file contributes: canonical JSON for configs, else its bytes."""
    from lorareg.store.digest import digest_json, sha256_bytes

    if rel in CANONICAL_JSON:
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "sha256:" + sha256_bytes(data)  # not JSON after all: its bytes are what it is
        if isinstance(obj, dict):
            obj = {k: v for k, v in obj.items() if k not in WRITER_FIELDS}
        return digest_json(obj)
    return "sha256:" + sha256_bytes(data)


def model_digest(weights_digest: str, files: Mapping[str, str], extra: Mapping[str, Any] | None = None) -> str:
    """``sha256:<hex>`` of the whole model from its weights digest and ``files`` (defining
    file -> ``file_identity``); ``extra`` adds caller-defined facts (an adapter's config)."""
    from lorareg.store.digest import digest_json

    return digest_json({"weights": weights_digest, "files": dict(files), **(extra or {})})


def folder_identities(folder: Path, names: list[str] | Mapping[str, Any]) -> dict[str, str]:
    """``file_identity`` of each defining file in ``folder`` (they are small: configs, tokenizers)."""
    return {rel: file_identity(rel, (Path(folder) / rel).read_bytes()) for rel in defining_files(names)}
