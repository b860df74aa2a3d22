"""show: one version, in sections (summary, config, recipe, outcome, checks, tracking, Hub, files)."""

from __future__ import annotations

from datetime import datetime

import click

from lorareg.cli import describe, render
from lorareg.cli.common import complete_ref, json_option, utc_option, with_registry
from lorareg.cli.render import Column


def _show_summary(reg, info, tracked) -> None:
    pairs = [("ref", info.ref), ("kind", describe.kind_label(info)), ("made", describe.made_sentence(info)),
             ("digest", info.digest)]
    if getattr(info, "weights_digest", None) and info.weights_digest != info.digest:
        pairs.append(("weights", info.weights_digest))
    if info.message:
        pairs.append(("message", info.message))
    if info.removed_at is not None:
        pairs.append(("removed", f"{render.when(info.removed_at)}: row and lineage kept, bytes evicted"))
    pairs += [("path", info.path or ("-" if info.removed_at else "kept as recipe only")),
              ("size", render.human_size(info.size_bytes)), ("aliases", ", ".join(info.aliases) or "-"),
              ("created", f"{render.when(info.created_at, seconds=True)} by {info.created_by}")]
    render.key_values(f"{describe.kind_label(info)} {info.ref}", pairs)


def _show_config(reg, info, tracked) -> None:
    skip = ("recipe", "outcome", "hub_pushes", "output", "parent", "recipe_digest", "checks")
    pairs = [(k.replace("_", " "), describe.value_text(k, v)) for k, v in info.details.items() if k not in skip]
    if pairs:
        render.key_values("config", pairs)


def _show_recipe(reg, info, tracked) -> None:
    recipe = info.details.get("recipe")
    if not recipe:
        return
    render.key_values("recipe", describe.recipe_pairs(recipe) + [("digest", info.details.get("recipe_digest", "-"))])
    render.table("inputs", [Column("role"), Column("ref", keep=True), Column("weight", justify="right"),
                            Column("digest", drop=1)],
                 [["base", recipe["base"]["ref"], "", recipe["base"]["digest"]]]
                 + [["adapter", a["ref"], f"{a['weight']:g}", a["digest"]] for a in recipe.get("adapters", [])])


def _show_outcome(reg, info, tracked) -> None:
    outcome = info.details.get("outcome") or {}
    pairs = describe.outcome_pairs(outcome)
    if pairs:
        render.key_values("outcome", pairs)
    if outcome.get("module_errors"):
        rows, note = describe.module_error_rows(outcome["module_errors"])
        if rows:
            render.table("module errors (relative, largest first)", [Column("module", keep=True),
                                                                     Column("error", justify="right")], rows)
        if note:
            click.echo(f"module errors: {note}" if not rows else f"  {note}")
    if outcome.get("subtract_deviation"):
        render.key_values("subtraction vs an exact rebuild", describe.deviation_pairs(outcome["subtract_deviation"]))


def _check_row(c) -> list:
    def num(v):  # "inf" (a string) when an output was not finite
        return v if isinstance(v, str) else f"{v:.3g}"

    inputs = f"{c['samples']} prompts" if c["prompts_sha256"] else f"{c['samples']} drawn, seed {c['seed']}"
    return [c["id"], "passed" if c["passed"] else "FAILED", num(c["max_abs_diff"]), num(c["tolerance"]),
            "-" if c["top1_agreement"] is None else f"{c['top1_agreement']:.1%}", inputs,
            render.when(datetime.fromisoformat(c["checked_at"]))]


def _show_checks(reg, info, tracked) -> None:
    if info.details.get("checks"):
        render.table("checks (lorareg check)",
                     [Column("#", justify="right"), Column("result", keep=True), Column("max |diff|", justify="right"),
                      Column("tolerance", justify="right"), Column("top-1", justify="right", drop=2),
                      Column("inputs", drop=3), Column("when", drop=1)],
                     [_check_row(c) for c in info.details["checks"]])


def _show_tracking(reg, info, tracked) -> None:
    if tracked.params:
        render.key_values("params", [(k, describe.value_text(k, v)) for k, v in sorted(tracked.params.items())])
    if tracked.tags:
        render.key_values("tags", sorted(tracked.tags.items()))
    if tracked.metrics:
        from lorareg.cli.cmd_tracking import metric_table

        metric_table(tracked, title="metrics")


def _show_hub(reg, info, tracked) -> None:
    pushes = info.details.get("hub_pushes")
    if pushes:
        render.table("Hub pushes", [Column("repo", keep=True), Column("tag"), Column("branch", drop=2),
                                    Column("commit", drop=1), Column("as", drop=3)], describe.hub_rows(pushes))


def _show_files(reg, info, tracked) -> None:
    if info.files:
        render.table("files", [Column("path", keep=True), Column("size", justify="right"), Column("sha256", drop=1)],
                     [[path, render.human_size(f.size), f.sha256[:16] if f.sha256 else "(not kept)"]
                      for path, f in info.files.items()])


# What `show` prints, in order: add a section by adding a function (reg, info, tracked).
SHOW_SECTIONS = [_show_summary, _show_config, _show_recipe, _show_outcome, _show_checks, _show_tracking, _show_hub,
                 _show_files]


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@json_option
@utc_option
@with_registry
def show(reg, ref: str, as_json: bool) -> None:
    """Show one version: what it is, how it was made, recipe, tracking, Hub pushes, files.

    \b
    Examples:
      lorareg show chat
      lorareg show assistant@3
      lorareg show assistant@prod --json | jq .message
    """
    info = reg.get(ref=ref)
    tracked = reg.tracked(ref=info.ref)
    if as_json:
        render.print_json({**info.to_dict(), "tracking": {"params": tracked.params, "tags": tracked.tags,
                                                          "metrics": tracked.metrics}})
        return
    for section in SHOW_SECTIONS:
        section(reg, info, tracked)



COMMANDS = [show]
