"""Registry facts in words for people: a recipe as sentences and rows, the commands that
reproduce a version, sizes, short digests, safe links.  Plain strings only: the templates
escape everything they print."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote, urlsplit, urlunsplit

from lorareg.cli.render import human_size, short  # noqa: F401  (one spelling of sizes and digests)

DEFAULT_SHARD = 5 * 2**30


def number(value: Any) -> str:
    """A metric or parameter value as a person reads it (no 0.30000000000000004)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return f"{value:.6g}"


def event_arg(value: Any) -> str:
    """An event's argument in a table cell: digests short, lists as lists, no Python reprs."""
    if isinstance(value, str) and value.startswith("sha256:"):
        return "sha256:" + short(value, 16)
    if isinstance(value, (list, tuple)):
        return ", ".join(event_arg(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {event_arg(v)}" for k, v in value.items())
    return number(value)


_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
_PASSWORD = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*):[^/@\s]*@")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}")


def without_credentials(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x``: shown, never the secret."""
    return _USERINFO.sub(r"\1", url or "")


def redact(text: str) -> str:
    """Every string the view prints passes here: a user:password@ in a URL and anything shaped
    like a Hugging Face token are blanked, wherever the registry happened to keep them (an
    endpoint recorded at push time, a message, a model card)."""
    if "@" not in text and "hf_" not in text:
        return text
    return _HF_TOKEN.sub("hf_***", _PASSWORD.sub(r"\1:***@", text))


def safe_url(endpoint: str | None, *parts: str) -> str | None:
    """``endpoint/part/part`` for a link, or None: only http(s), and any user:password@ dropped
    (an endpoint recorded at push time must never put a credential on the page)."""
    if not endpoint:
        return None
    u = urlsplit(endpoint)
    if u.scheme not in ("http", "https") or not u.hostname:
        return None
    host = u.hostname if u.port is None else f"{u.hostname}:{u.port}"
    if ":" in u.hostname:  # IPv6 literal
        host = f"[{u.hostname}]" + ("" if u.port is None else f":{u.port}")
    path = "/".join([u.path.rstrip("/")] + [quote(p, safe="/") for p in parts])
    return urlunsplit((u.scheme, host, path, "", ""))


def version_summary(kind: str, details: Mapping[str, Any]) -> str:
    """One line saying what a version is (the versions table's "summary" column)."""
    if kind == "base":
        params = details.get("param_count")
        size = f"{params / 1e6:.1f}M params" if params else ""
        return " ".join(x for x in (details.get("architecture", ""), details.get("dtype", ""), size) if x)
    if kind == "adapter":
        flags = "".join(f" {f}" for f in ("rslora", "dora") if details.get(f"use_{f}"))
        return f"r={details.get('r')} alpha={details.get('lora_alpha')}{flags} on {details.get('base')}"
    r = details.get("recipe") or {}
    adapters = " + ".join(f"{a['ref']}×{number(a['weight'])}" for a in r.get("adapters", []))
    made = "subtract" if r.get("subtracted") else r.get("method", "")
    out = "" if r.get("output", "model") == "model" else f" → adapter ({r.get('output')})"
    return f"{made}: {r.get('base', {}).get('ref', '')} + {adapters}{out}".strip()


@dataclass(frozen=True)
class RecipeWords:
    headline: str
    rows: tuple[tuple[str, str], ...]
    inputs: tuple[Mapping[str, Any], ...]  # role, ref, weight, digest
    notes: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)


def recipe_words(recipe: Mapping[str, Any], outcome: Mapping[str, Any] | None = None) -> RecipeWords:
    """A schema-2 recipe (``Recipe.to_json``) as a headline, labelled rows and an inputs table."""
    outcome = outcome or {}
    base = recipe.get("base") or {}
    adapters = recipe.get("adapters") or []
    params = dict(recipe.get("params") or {})
    sub = recipe.get("subtracted")
    n = len(adapters)
    if sub:
        headline = (f"Made by subtracting {sub['removed']['ref']} (weight {number(sub['removed']['weight'])}) from the "
                    f"merged weights of {sub['source']['ref']}, leaving {n} adapter{'s' * (n != 1)} on "
                    f"{base.get('ref')}.")
    elif recipe.get("output", "model") != "model":
        rank = f", rank {recipe.get('rank')}" if recipe.get("rank") else ""
        headline = (f"{n} adapter{'s' * (n != 1)} of {base.get('ref')} combined into one adapter "
                    f"({recipe.get('output')}{rank}) with {recipe.get('method')}.")
    else:
        headline = f"{n} adapter{'s' * (n != 1)} merged into {base.get('ref')} with {recipe.get('method')}."
    method = str(recipe.get("method", ""))
    if params:
        method += ": " + ", ".join(f"{k} {number(v)}" for k, v in sorted(params.items()))
    adapter_dtype = recipe.get("adapter_dtype", "float32")
    rows = [
        ("method", method),
        ("seed", str(recipe.get("seed"))),
        ("output dtype", str(recipe.get("dtype"))),
        ("adapter dtype", "float32 (A and B upcast, as PeftModel.from_pretrained)" if adapter_dtype == "float32"
         else "the base's (A and B rounded first)"),
        ("output", "a full model" if recipe.get("output", "model") == "model"
         else f"an adapter ({recipe.get('output')})"),
    ]
    if recipe.get("rank"):
        rows.append(("rank", str(recipe["rank"])))
    if recipe.get("max_shard_size", DEFAULT_SHARD) != DEFAULT_SHARD:
        rows.append(("shards up to", human_size(recipe.get("max_shard_size"))))
    if recipe.get("allow_base_mismatch"):
        rows.append(("base mismatch", "allowed (adapters registered against another base)"))
    rows.append(("engine", f"{recipe.get('engine', '')}, lorareg {recipe.get('lorareg_version') or '?'}"))
    libs = recipe.get("versions") or {}
    if libs:
        rows.append(("library versions", ", ".join(f"{k} {v}" for k, v in sorted(libs.items()))))
    inputs = [{"role": "base", "ref": base.get("ref"), "weight": None, "digest": base.get("digest")}]
    inputs += [{"role": "adapter", "ref": a.get("ref"), "weight": a.get("weight"), "digest": a.get("digest")}
               for a in adapters]
    notes = [str(x) for x in outcome.get("notes", [])]
    if "tensors_changed" in outcome:
        notes.append(f"{outcome['tensors_changed']} of {outcome.get('tensors_total', '?')} tensors changed")
    dev = outcome.get("subtract_deviation")
    if isinstance(dev, Mapping):
        if dev.get("measured"):
            notes.append(f"subtraction against an exact rebuild: {dev.get('tensors_differing')} tensors and "
                         f"{dev.get('elements_differing')} elements differ, max abs {number(dev.get('max_abs'))}, "
                         f"max {dev.get('max_ulp_of_merged', dev.get('max_ulp'))} ulp of the merged weight")
        else:
            notes.append(f"subtraction not measured: {dev.get('why')}")
    return RecipeWords(headline=headline, rows=tuple(rows), inputs=tuple(inputs), notes=tuple(notes), params=params)


def reproduce_commands(ref: str, name: str, version: int, kind: str,
                       details: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(what it does, shell command) pairs that reproduce or re-check a version."""
    q = shlex.quote
    out: list[tuple[str, str]] = []
    recipe = details.get("recipe") if kind == "merge" else None
    if recipe and recipe.get("subtracted"):
        sub = recipe["subtracted"]
        out.append(("take the adapter out of the source again (subtraction)",
                    f"lorareg rollback {q(sub['source']['ref'])} --adapter {q(sub['removed']['ref'])} "
                    f"--strategy subtract"))
    elif recipe:
        out.append(("record the same recipe (an identical recipe returns this version)", merge_command(name, recipe)))
    if kind == "merge":
        out.append(("re-run the recipe and compare the digest", f"lorareg rebuild {q(ref)}"))
    elif details.get("hub_repo"):
        rev = details.get("hub_commit") or details.get("hub_revision") or "main"
        add = f"lorareg add {kind} hf://{details['hub_repo']}@{rev}"
        if kind == "adapter":
            add += f" --base {q(str(details.get('base')))}"
        out.append(("register the same Hub commit elsewhere", f"{add} --name {q(name)}"))
    out.append(("write its files to a folder", f"lorareg export {q(ref)} {q(f'./{name}-v{version}')}"))
    out.append(("re-hash its files against the recorded digests", f"lorareg verify {q(ref)}"))
    return out


def merge_command(name: str, recipe: Mapping[str, Any]) -> str:
    q = shlex.quote
    parts = ["lorareg", "merge", q(recipe["base"]["ref"])]
    parts += [q(f"{a['ref']}:{float(a['weight'])!r}") for a in recipe.get("adapters", [])]  # exact weight
    parts += ["--name", q(name), "--method", q(str(recipe.get("method")))]
    for key, value in sorted((recipe.get("params") or {}).items()):
        if value is not None:
            parts += [f"--{key.replace('_', '-')}", q(str(value))]
    parts += ["--seed", str(recipe.get("seed")), "--dtype", q(str(recipe.get("dtype")))]
    if recipe.get("adapter_dtype", "float32") != "float32":
        parts += ["--adapter-dtype", q(str(recipe["adapter_dtype"]))]
    if recipe.get("output", "model") != "model":
        parts += ["--as-adapter", q(str(recipe["output"]))]
        if recipe.get("rank"):
            parts += ["--rank", str(recipe["rank"])]
    if recipe.get("max_shard_size", DEFAULT_SHARD) != DEFAULT_SHARD:
        parts += ["--max-shard-size", str(recipe["max_shard_size"])]
    if recipe.get("allow_base_mismatch"):
        parts.append("--allow-base-mismatch")
    return " ".join(parts)
