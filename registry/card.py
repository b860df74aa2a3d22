"""The README.md model card of a merged model or adapter: what goes in it (``merge_card``,
``version_card``: looked up in the registry) and how it renders (``render_card``).

The card is a pure function of what the registry knows (no clock, no host names), so
the same version always renders the same bytes and a re-push stays a no-op.  Anything
that looks like a credential is blanked before the text leaves this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from lorareg.errors import HubError, LoraregError
from lorareg.registry.hub_client import is_repo_id

if TYPE_CHECKING:
    from sqlmodel import Session

    from lorareg.registry import models as m
    from lorareg.registry.recipe import Recipe

__all__ = ["merge_card", "render_card", "version_card"]

# Shown in their own rows or the inputs table, or results rather than knobs (the full
# recipe is in the card's JSON block anyway); everything else is a method parameter.
_NOT_PARAMETERS = {"method", "seed", "dtype", "adapters", "base", "versions", "params", "engine",
                   "lorareg_version", "notes", "tensors_changed", "tensors_total"}
_SECRETS = [
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_***"),  # Hugging Face user and org tokens
    (re.compile(r"(https?://)[^/@\s]+@"), r"\1***@"),  # credentials inside a URL
    (re.compile(r"(?i)\b(bearer\s+)[\w.~+/-]{8,}=*"), r"\1***"),
]


def merge_card(session: "Session", recipe: "Recipe", *, name: str, version: int, output_digest: str,
               check: Mapping[str, Any] | None = None) -> str:
    """The card of a merged version: its inputs with digests and sources, the recipe, how to rebuild."""
    from lorareg.registry import lookup
    from lorareg.registry import models as m
    from lorareg.registry.recipe import lorareg_version
    from lorareg.registry.version_info import source_of

    base = lookup.resolve(session, recipe.base.ref)
    base_extra = session.get(m.Base, base.id)
    inputs = [{"role": "base", **recipe.base.to_json(), "source": source_of(session, base)}] + [
        {"role": "adapter", **a.to_json(), "source": source_of(session, lookup.resolve(session, a.ref))}
        for a in recipe.adapters]
    return render_card(kind="merge" if recipe.output == "model" else "adapter", name=name, version=version,
                       base_model=base_extra.hub_repo if base_extra is not None else None, recipe=recipe.to_json(),
                       inputs=inputs, output_digest=output_digest, lorareg_version=lorareg_version(), check=check)


def version_card(session: "Session", row: "m.Version", *, adapter_only: bool) -> str:
    """The card pushed with a version: a merge's own card, or an adapter's (or base's) short one."""
    from lorareg.registry import lookup
    from lorareg.registry import models as m
    from lorareg.registry.recipe import lorareg_version
    from lorareg.registry.version_info import source_of, stored_recipe

    if row.kind == "merge":
        from lorareg.registry.check import latest_passing, result_of

        passing = latest_passing(session, row.id)  # cited in the card: the latest check that passed
        return merge_card(session, stored_recipe(session, row), name=row.name, version=row.version,
                          output_digest=row.digest,
                          check=result_of(passing, lookup.ref_of(row)).to_dict() if passing else None)
    inputs: list[dict] = []
    recipe: dict = {}
    base_model = None
    if row.kind == "adapter":
        ad = session.get(m.Adapter, row.id)
        base = session.get(m.Version, ad.base_version_id)
        base_extra = session.get(m.Base, base.id)  # None for a merged model (an adapter chain)
        base_model = base_extra.hub_repo if base_extra is not None else None
        inputs = [{"role": "base", "ref": lookup.ref_of(base), "digest": base.digest,
                   "source": source_of(session, base)}]
        summary = json.loads(ad.summary_json)
        recipe = {"adapter": lookup.ref_of(row), "r": summary.get("r"), "lora_alpha": summary.get("lora_alpha")}
    return render_card(kind="adapter" if adapter_only or row.kind == "adapter" else "merge", name=row.name,
                       version=row.version, base_model=base_model, recipe=recipe, inputs=inputs,
                       output_digest=row.digest, lorareg_version=lorareg_version())


def render_card(*, kind: Literal["merge", "adapter"], name: str, version: int, base_model: str | None,
                recipe: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]], output_digest: str,
                lorareg_version: str, check: Mapping[str, Any] | None = None) -> str:
    """README.md text: Hub YAML front matter, then inputs, recipe, output digest, rebuild."""
    from huggingface_hub import ModelCardData

    if kind not in ("merge", "adapter"):
        raise LoraregError(f"unknown card kind {kind!r}", hint="use kind='merge' or kind='adapter'")
    if base_model is not None and not is_repo_id(base_model):
        raise HubError(f"base_model {base_model!r} is not a Hub repo id",
                       hint="pass the base's Hub id (ORG/NAME), or None when it did not come from the Hub")
    n_adapters = sum(1 for i in inputs if i.get("role") == "adapter")
    if kind == "merge":
        tags, library = ["lora", "merge", "lorareg"], "transformers"
    else:
        tags, library = ["lora", "peft", "lorareg"] + (["merge"] if n_adapters > 1 else []), "peft"
    data = ModelCardData(
        base_model=base_model, library_name=library, tags=tags,
        base_model_relation="merge" if kind == "merge" else "adapter",
        lorareg={"name": name, "version": version, **({"digest": output_digest} if output_digest else {})},
    )
    body = "\n".join([
        f"# {name} v{version}",
        "",
        _summary(kind, base_model, n_adapters, lorareg_version),
        "",
        "## Inputs",
        "",
        "| role | name@version | weight | digest | source |",
        "|---|---|---|---|---|",
        *(_input_row(i) for i in inputs),
        "",
        "## Recipe",
        "",
        "| | |",
        "|---|---|",
        *_recipe_rows(recipe, lorareg_version),
        "",
        "<details><summary>recipe as recorded</summary>",
        "",
        "```json",
        json.dumps(recipe, sort_keys=True, indent=2, default=str),
        "```",
        "",
        "</details>",
        "",
        "## Output",
        "",
        (f"`{output_digest}`: the lorareg digest" if output_digest else
         f"The lorareg digest (`lorareg show {name}@{version}`)") + " of the output (tensor names, dtypes, "
        "shapes and bytes; it does not depend on how the weights are split into shards).",
        "",
        *(_check_section(check) if check else []),
        "## Rebuild",
        "",
        "With the inputs above registered in lorareg:",
        "",
        "```bash",
        f"lorareg rebuild {name}@{version}",
        "```",
        "",
        "This re-runs the recipe and checks that the output digest matches, bit for bit.",
        "",
    ])
    return _redact(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _check_section(c: Mapping[str, Any]) -> list[str]:
    """The latest passing ``lorareg check``, in words a reader of the card can verify."""
    rounding = c.get("rounding") or {}
    reference = ("the base with the adapters applied unmerged through PEFT" if c.get("reference") == "peft-unmerged"
                 else "the base plus the recipe's combined deltas in float64, unrounded")
    inputs = (f"{c.get('samples')} prompts (file sha256 `{c['prompts_sha256']}`"
              + (", chat template applied)" if c.get("chat") else ")") if c.get("prompts_sha256")
              else f"{c.get('samples')} token sequences drawn from the vocabulary with seed {c.get('seed')}")
    lines = [
        "## Check",
        "",
        f"`lorareg check` passed on {str(c.get('checked_at', ''))[:10]}: compared with {reference} in float32, "
        f"{c.get('compared', 'the merged model')} ({c.get('dtype')}) differs by at most {_num(c.get('max_abs_diff'))} "
        f"in its {c.get('outputs', 'logits')} (mean {_num(c.get('mean_abs_diff'))}); the tolerance is "
        f"{_num(c.get('tolerance'))}, {_num(c.get('factor'))} times the {_num(rounding.get('max_abs_diff'))} that "
        f"rounding alone makes ({rounding.get('baseline', 'the unmerged model in the merged dtype')}).",
    ]
    if c.get("top1_agreement") is not None:
        lines.append(f"Top-1 agreement {c['top1_agreement']:.2%} (rounding alone: "
                     f"{rounding.get('top1_agreement', 0):.2%}).")
    if c.get("generation_agreement") is not None:
        lines.append(f"Greedy generations ({c.get('max_new_tokens')} tokens): {c['generation_agreement']:.2%} "
                     "of tokens equal.")
    versions = ", ".join(f"{k} {v}" for k, v in sorted((c.get("versions") or {}).items()))
    lines += [f"Inputs: {inputs}; {c.get('positions')} positions; {versions}.", ""]
    return lines


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def _summary(kind: str, base_model: str | None, n_adapters: int, lorareg_version: str) -> str:
    # A root-relative link, so the card points at the right host on mirrors and self-hosted Hubs too.
    base = f"[{base_model}](/{base_model})" if base_model else "its base model"
    if kind == "merge":
        what = f"{n_adapters} LoRA adapter{'s' if n_adapters != 1 else ''} merged into {base}"
        load = "Load it with `transformers` (`AutoModel*.from_pretrained`); no PEFT or lorareg code is needed."
    else:
        what = f"A LoRA adapter for {base}" + (f", combined from {n_adapters} adapters" if n_adapters > 1 else "")
        load = "Load it with PEFT on top of the base (`PeftModel.from_pretrained`)."
    return f"{what[0].upper()}{what[1:]}, built with lorareg {lorareg_version}. {load}"


def _input_row(item: Mapping[str, Any]) -> str:
    ref = item.get("ref") or str(item.get("name", ""))
    if not item.get("ref") and item.get("version") is not None:
        ref += f"@{item['version']}"
    weight = item.get("weight")
    cells = [item.get("role", ""), ref, "" if weight is None else weight, _code(item.get("digest")),
             _code(item.get("source"))]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _recipe_rows(recipe: Mapping[str, Any], lorareg_version: str) -> list[str]:
    params = recipe.get("params")
    if not isinstance(params, Mapping):
        params = {k: v for k, v in recipe.items() if k not in _NOT_PARAMETERS and v not in (None, "", [], {})}
    versions = dict(recipe.get("versions") or {})
    versions.setdefault("lorareg", recipe.get("lorareg_version") or lorareg_version)
    if recipe.get("engine"):
        versions.setdefault("engine", recipe["engine"])
    rows = [
        ("method", recipe.get("method") or "—"),
        ("parameters", ", ".join(f"{k}={_plain(v)}" for k, v in sorted(params.items())) or "—"),
        ("seed", "—" if recipe.get("seed") is None else recipe["seed"]),
        ("dtype", recipe.get("dtype") or "—"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))),
    ]
    return [f"| {k} | {_cell(v)} |" for k, v in rows]


def _plain(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (Mapping, list, tuple)) else str(value)


def _code(value: Any) -> str:
    return f"`{value}`" if value else ""


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text
