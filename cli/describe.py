"""A version in words for people: its kind, how it was made, a one-line summary, and the
recipe and outcome as rows of text (sizes as sizes, mappings as ``k=v``, never a Python repr).
``--json`` prints the recorded values instead."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from lorareg.cli.render import human_size

SIZE_KEYS = ("max_shard_size", "size", "size_bytes", "bytes")
COUNT_KEYS = ("param_count", "trainable_params")


def kind_label(info) -> str:
    """base, adapter, or what a merge wrote: a merged model or a merged adapter (--as-adapter)."""
    if info.kind != "merge":
        return info.kind
    return "merged adapter" if info.details.get("output") == "adapter" else "merged model"


def made_label(info) -> str:
    """``ls``'s kind: base, adapter, or how a merged version was made (merge; rollback, rebuilt
    from the base; subtract, a rollback from the merged weights), ``->adapter`` when it wrote
    an adapter (--as-adapter)."""
    if info.kind != "merge":
        return info.kind
    recipe = info.details.get("recipe") or {}
    made = "subtract" if recipe.get("subtracted") else ("rollback" if info.details.get("parent") else "merge")
    return f"{made}->adapter" if info.details.get("output") == "adapter" else made


def made_sentence(info) -> str:
    recipe = info.details.get("recipe") or {}
    parent = info.details.get("parent")
    sub = recipe.get("subtracted")
    if sub:
        removed = sub["removed"]
        return (f"rollback of {sub['source']['ref']}: {removed['ref']} x{removed['weight']:g} "
                f"subtracted from its weights")
    if parent:
        return f"rollback of {parent}: rebuilt from the base without an adapter"
    return "merge" if info.kind == "merge" else "added"


def _params(n: int | None) -> str:
    if not n:
        return ""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def summary(info) -> str:
    d = info.details
    if info.kind == "base":
        return f"{d.get('architecture', '')} {d.get('dtype', '')} {_params(d.get('param_count'))}".strip()
    if info.kind == "adapter":
        flags = "".join(f" {f}" for f, on in (("rslora", d.get("use_rslora")), ("dora", d.get("use_dora"))) if on)
        return f"r={d.get('r')} alpha={d.get('lora_alpha'):g}{flags} on {d.get('base')}" \
            if isinstance(d.get("lora_alpha"), (int, float)) else f"r={d.get('r')} on {d.get('base')}"
    r = d.get("recipe") or {}
    ads = " + ".join(f"{a['ref']}:{a['weight']:g}" for a in r.get("adapters", []))
    sub = r.get("subtracted")
    if sub:
        return f"{sub['source']['ref']} - {sub['removed']['ref']}:{sub['removed']['weight']:g}"
    if r.get("output") in ("cat", "svd"):
        rank = d.get("outcome", {}).get("output_rank") or r.get("rank")
        return f"{r['output']} of {ads}" + (f" (rank {rank})" if rank else "")
    return f"{r.get('method', '')} {r.get('base', {}).get('ref', '')} + {ads}".strip()


def size_text(n: int) -> str:
    """``5.4 GB (5 GiB)``: the decimal size, and the binary one when that is a round number."""
    text = human_size(n)
    for unit, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= div and n % div == 0:
            return f"{text} ({n // div} {unit})"
    return text


def value_text(key: str, value: Any) -> str:
    """One recorded value as text: sizes as sizes, lists joined, mappings as ``k=v``."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and (key in SIZE_KEYS or key.endswith("_bytes") or key.endswith("_size")):
        return size_text(value)
    if isinstance(value, int) and key in COUNT_KEYS:
        return f"{value:,} ({_params(value)})"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={value_text(str(k), v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(key, v) for v in value)
    return str(value)


def recipe_pairs(recipe: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The recipe in the order a reader asks about it (inputs are a table of their own)."""
    pairs = [("method", recipe.get("method")), ("params", value_text("params", recipe.get("params")))]
    if recipe.get("method") != "linear" or recipe.get("seed"):
        pairs.append(("seed", recipe.get("seed")))
    output = recipe.get("output", "model")
    rank = f", rank {recipe['rank']}" if recipe.get("rank") else ""
    pairs += [("output", output if output == "model" else f"adapter ({output}{rank})"),
              ("dtype", recipe.get("dtype")), ("adapter dtype", recipe.get("adapter_dtype")),
              ("max shard size", value_text("max_shard_size", recipe.get("max_shard_size")))]
    if recipe.get("allow_base_mismatch"):
        pairs.append(("base mismatch", "allowed (adapters registered against another base)"))
    sub = recipe.get("subtracted")
    if sub:
        pairs.append(("subtracted", f"{sub['removed']['ref']} x{sub['removed']['weight']:g} taken out of "
                                    f"{sub['source']['ref']}'s weights"))
    versions = recipe.get("versions") or {}
    pairs += [("engine", f"{recipe.get('engine', '')}, lorareg {recipe.get('lorareg_version') or '?'}"),
              ("libraries", ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "-")]
    return [(k, value_text(k, v) if not isinstance(v, str) else v) for k, v in pairs]


def outcome_pairs(outcome: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the run reported, short values only (module errors and deviation get their own blocks)."""
    pairs = []
    if outcome.get("tensors_total"):
        pairs.append(("tensors changed", f"{outcome.get('tensors_changed', 0)} of {outcome['tensors_total']}"))
    if outcome.get("output_rank"):
        pairs.append(("output rank", str(outcome["output_rank"])))
    for note in outcome.get("notes") or ():
        pairs.append(("note", note))
    for k, v in outcome.items():
        if k not in ("tensors_total", "tensors_changed", "output_rank", "notes", "module_errors", "subtract_deviation"):
            pairs.append((k.replace("_", " "), value_text(k, v)))
    return pairs


def module_error_rows(errors: Mapping[str, float], limit: int = 10) -> tuple[list[list[str]], str]:
    """The largest relative errors of an --as-adapter output, and a line about the rest."""
    ranked = sorted(errors.items(), key=lambda kv: -kv[1])
    if ranked and ranked[0][1] == 0:
        return [], f"exact: relative error 0 in all {len(ranked)} modules"
    rows = [[name, f"{err:.3g}"] for name, err in ranked[:limit]]
    rest = ranked[limit:]
    note = f"{len(rest)} more modules, each below {rest[0][1]:.3g}" if rest else ""
    return rows, note


def deviation_pairs(dev: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A subtraction's measured deviation from an exact rebuild, with the figure that matters first."""
    if not dev.get("measured"):
        return [("measured", f"no: {dev.get('why', 'the inputs of an exact rebuild are not all here')}")]
    pairs = []
    if "max_ulp_of_merged" in dev:
        # Subtraction starts from the merged weights and keeps their rounding: an error is fairly
        # measured in units of the merged weight, not of the (possibly tiny) result.
        pairs.append(("max error", f"{dev['max_ulp_of_merged']:g} ulp of the merged weights (the figure to judge)"))
    pairs += [("differs", f"{dev.get('elements_differing', 0):,} elements in "
                          f"{dev.get('tensors_differing', 0)} tensors"),
              ("max abs", f"{dev.get('max_abs', 0):.3g}"),
              ("max ulp", f"{dev.get('max_ulp', 0):,} at the result's own magnitude (large only where it is near 0)")]
    return pairs


def recipe_change_lines(field: str, a: Any, b: Any) -> list[str]:
    """One recipe difference as lines a person reads (adapters added, removed, reweighted)."""
    if field == "adapters" and isinstance(a, list) and isinstance(b, list):
        wa = {x["ref"]: x["weight"] for x in a}
        wb = {x["ref"]: x["weight"] for x in b}
        lines = [f"adapters: - {r} x{w:g}" for r, w in wa.items() if r not in wb]
        lines += [f"adapters: + {r} x{w:g}" for r, w in wb.items() if r not in wa]
        lines += [f"adapters: {r} x{wa[r]:g} -> x{wb[r]:g}" for r in wa if r in wb and wa[r] != wb[r]]
        if not lines:
            lines = ["adapters: same adapters and weights, other order or digests"]
        return lines
    if field in ("base",) and isinstance(a, Mapping) and isinstance(b, Mapping):
        return [f"base: {a.get('ref')} -> {b.get('ref')}"]
    if field == "subtracted":
        def side(v):
            return "-" if not v else f"{v['removed']['ref']} taken out of {v['source']['ref']}"
        return [f"subtracted: {side(a)} -> {side(b)}"]
    return [f"{field.replace('_', ' ')}: {value_text(field, a)} -> {value_text(field, b)}"]


def hub_rows(pushes: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [[p["repo_id"], p["tag"], p.get("branch", ""), (p.get("commit") or "")[:12],
             "adapter" if p.get("adapter_only") else "model"] for p in pushes]
