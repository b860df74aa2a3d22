"""Where a merged model's tokenizer, chat template and generation config come from.

An adapter trained with added tokens or a chat format carries the tokenizer, chat template
and generation config it was trained with (``tokenizer.save_pretrained(output_dir)``); the
merged model must ship those, not the base's, or it loses the tokens, the template and the
EOS ids.  Each *group* of side files comes whole from one source: the one adapter that has
it, the adapter ``prefer`` names when several have different ones, else the base.  A group
is never mixed from two sources (a base tokenizer.json with an adapter's
tokenizer_config.json is neither tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lorareg.errors import MergeError

__all__ = ["GROUPS", "choose_side_files", "copy_side_files", "side_file_names", "tokenizer_size"]

GROUPS = ("tokenizer", "chat_template", "generation_config")
_TOKENIZER = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model",
}
_CHAT = {"chat_template.jinja", "chat_template.json"}
_CHAT_DIR = "additional_chat_templates"
_GENERATION = {"generation_config.json"}
_TEMPLATE_FILE = "chat_template.jinja"


def group_of(name: str) -> str | None:
    """The group of a file (relative path), None for the files outside every group."""
    if name in _TOKENIZER or name.endswith(".tiktoken"):
        return "tokenizer"
    if name in _CHAT or name.startswith(_CHAT_DIR + "/"):
        return "chat_template"
    if name in _GENERATION:
        return "generation_config"
    return None


def side_file_names(folder: Path) -> dict[str, list[str]]:
    """group -> the relative paths of that group's files in ``folder``."""
    folder = Path(folder)
    out: dict[str, list[str]] = {}
    candidates = [p for p in folder.iterdir() if p.is_file()]
    if (folder / _CHAT_DIR).is_dir():
        candidates += sorted(p for p in (folder / _CHAT_DIR).iterdir() if p.is_file())
    for path in sorted(candidates):
        rel = path.relative_to(folder).as_posix()
        group = group_of(rel)
        if group is not None:
            out.setdefault(group, []).append(rel)
    return out


def _embedded_template(folder: Path) -> object | None:
    """A chat template kept inside tokenizer_config.json (how transformers < 4.47 saved it)."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def _groups(folder: Path) -> dict[str, str]:
    """group -> a fingerprint of its content, for the groups ``folder`` has."""
    names = side_file_names(folder)
    if "chat_template" not in names and _embedded_template(folder) is not None:
        names["chat_template"] = []
    out = {}
    for group, files in names.items():
        h = hashlib.sha256()
        for rel in files:
            h.update(rel.encode() + b"\0" + hashlib.sha256((Path(folder) / rel).read_bytes()).digest())
        if group == "chat_template" and not files:
            h.update(json.dumps(_embedded_template(folder), sort_keys=True).encode())
        out[group] = h.hexdigest()
    return out


def choose_side_files(adapters: Sequence[Path], *, prefer: int | None = None,
                      names: Sequence[str] | None = None) -> dict[str, int]:
    """group -> index of the adapter it comes from (groups from the base are absent).

    ``prefer``: the adapter that supplies every group it has (``-1``: the base supplies all);
    otherwise a group comes from the adapters that have it when they agree, and two adapters
    with different ones are refused.  ``names``: how to call the adapters in that error."""
    if prefer == -1:
        return {}
    shown = list(names) if names is not None else [Path(a).name for a in adapters]
    found = [_groups(a) for a in adapters]
    out: dict[str, int] = {}
    for group in GROUPS:
        having = [i for i, g in enumerate(found) if group in g]
        if not having:
            continue
        if prefer is not None and prefer in having:
            out[group] = prefer
            continue
        if len({found[i][group] for i in having}) > 1:
            which = " and ".join(shown[i] for i in having[:2])
            raise MergeError(f"{which} carry different {group.replace('_', ' ')} files",
                             hint="choose one with --tokenizer-from REF (an adapter of this merge, or the base)")
        out[group] = having[0]
    return out


def copy_side_files(base: Path, adapters: Sequence[Path], chosen: Mapping[str, int], dest: Path,
                    *, skip: Callable[[str], bool]) -> dict[str, str]:
    """Copy the base's top-level files (but those ``skip`` names and the groups an adapter
    supplies) and each chosen adapter's group; returns file -> "base" or the adapter index."""
    origin: dict[str, str] = {}
    for path in sorted(Path(base).iterdir()):
        name = path.name
        if skip(name) or not path.is_file() or group_of(name) in chosen:
            continue
        shutil.copyfile(path, dest / name)  # follows links: an HF cache snapshot holds links to blobs
        origin[name] = "base"
    if "chat_template" not in chosen and (Path(base) / _CHAT_DIR).is_dir():
        for rel in side_file_names(base).get("chat_template", []):
            if "/" in rel:
                (dest / rel).parent.mkdir(exist_ok=True)
                shutil.copyfile(Path(base) / rel, dest / rel)
                origin[rel] = "base"
    for group, index in chosen.items():
        folder = Path(adapters[index])
        files = side_file_names(folder).get(group, [])
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / rel, dest / rel)
            origin[rel] = str(index)
        embedded = _embedded_template(folder)
        if group == "chat_template" and not files and chosen.get("tokenizer") != index and isinstance(embedded, str):
            # the adapter's template lives in its tokenizer_config.json, which is not copied
            (dest / _TEMPLATE_FILE).write_text(embedded, encoding="utf-8")
            origin[_TEMPLATE_FILE] = str(index)
    return origin


def tokenizer_size(folder: Path) -> int | None:
    """How many token ids a saved tokenizer uses (highest id + 1); None when it cannot be read
    without the tokenizer's own library (a sentencepiece model alone)."""
    folder = Path(folder)
    ids: list[int] = []
    try:
        if (folder / "tokenizer.json").is_file():
            data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            vocab = (data.get("model") or {}).get("vocab")
            if isinstance(vocab, dict):
                ids += [int(v) for v in vocab.values()]
            elif isinstance(vocab, list):
                ids.append(len(vocab) - 1)
            ids += [int(t["id"]) for t in data.get("added_tokens") or []]
        else:
            if (folder / "vocab.json").is_file():
                ids += [int(v) for v in json.loads((folder / "vocab.json").read_text(encoding="utf-8")).values()]
            elif (folder / "vocab.txt").is_file():
                ids.append(len((folder / "vocab.txt").read_text(encoding="utf-8").splitlines()) - 1)
            if (folder / "added_tokens.json").is_file():
                ids += [int(v) for v in json.loads((folder / "added_tokens.json").read_text(encoding="utf-8")).values()]
        if (folder / "tokenizer_config.json").is_file():
            decoder = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get(
                "added_tokens_decoder") or {}
            ids += [int(k) for k in decoder]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
    return max(ids) + 1 if ids else None
