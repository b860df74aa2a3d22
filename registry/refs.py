"""Names and references: ``name``, ``name@3``, ``name@alias``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorareg.errors import InvalidNameError, LoraregError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
DEFAULT_ALIAS = "current"
Kind = Literal["base", "adapter", "merge"]
KINDS: tuple[str, ...] = ("base", "adapter", "merge")


def a_kind(kind: str) -> str:
    """``a base``, ``an adapter``, ``a merge``: for messages that name a kind."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None  # an explicit number
    alias: str | None = None  # or an alias; neither: the `current` alias, else the latest

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or ".." in name:
        raise InvalidNameError(f"invalid name {name!r}: use [a-z0-9][a-z0-9._-]* without '..' or '/'")
    return name


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias):
        raise InvalidNameError(
            f"invalid alias {alias!r}: start with a letter, then [a-z0-9._-]",
            hint="aliases look like: current, prod, staging",
        )
    return alias


def parse_ref(text: str) -> Ref:
    name, sep, tail = text.strip().partition("@")
    check_name(name)
    if not sep:
        return Ref(name)
    if tail.isdigit():
        if int(tail) < 1:
            raise LoraregError(f"invalid reference {text!r}: versions start at 1")
        return Ref(name, version=int(tail))
    if tail.startswith("v") and tail[1:].isdigit():
        return Ref(name, version=int(tail[1:]))
    return Ref(name, alias=check_alias(tail))


def default_name(folder_name: str) -> str:
    """A valid name derived from a folder name (``Llama-3.1_8B`` -> ``llama-3.1_8b``)."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", folder_name.lower()).strip("-._")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return check_name(cleaned or "model")


# Folder names that say where a model was saved, not what it is: the name comes from the
# folder above (``runs/chat/checkpoint-900`` -> ``chat``, ``llama-3/model`` -> ``llama-3``).
GENERIC_FOLDER = re.compile(r"^(model|models|adapter|adapters|lora|output|outputs|out|final|final[-_]model|best|"
                            r"best[-_]model|latest|merged|export|hf|checkpoint|checkpoint[-_]\d+|step[-_]?\d+|"
                            r"snapshot|[0-9a-f]{40})$", re.IGNORECASE)


def default_name_for_folder(folder: Path) -> str:
    """A name for a folder added without ``--name``: its own, or that of the nearest folder
    above it whose name is not generic (``model``, ``checkpoint-900``, a snapshot hash)."""
    for part in [folder, *folder.parents]:
        if part.name and not GENERIC_FOLDER.match(part.name) and part.name != "snapshots":
            return default_name(part.name.split("--")[-1] if part.name.startswith("models--") else part.name)
    return default_name(folder.name)
