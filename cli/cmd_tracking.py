"""Tracking from the shell: tag, untag, metrics, params."""

from __future__ import annotations

import click

from lorareg.cli import render
from lorareg.cli.common import complete_ref, json_option, json_value, parse_assignments, utc_option, with_registry
from lorareg.cli.describe import value_text
from lorareg.cli.render import Column


def _series(tracked) -> dict[str, list]:
    """Each metric's points in step order (points logged without a step keep their logging order)."""
    out: dict[str, list] = {}
    for p in tracked.history:
        out.setdefault(p.key, []).append(p)
    for key, points in out.items():
        if all(p.step is not None for p in points):
            points.sort(key=lambda p: p.step)
    return out


def metric_table(tracked, *, title: str | None = None) -> None:
    """One row per metric: latest (highest step), best and worst, how many points, and on a
    terminal a sparkline over the steps."""
    columns = [Column("metric", keep=True), Column("latest", justify="right"), Column("min", justify="right", drop=3),
               Column("max", justify="right", drop=3), Column("points", justify="right", drop=4),
               Column("steps", drop=2)]
    spark = render.is_terminal()
    if spark:
        columns.append(Column("trend", drop=1))
    rows = []
    for key, points in sorted(_series(tracked).items()):
        values = [p.value for p in points]
        steps = [p.step for p in points if p.step is not None]
        row = [key, f"{tracked.metrics.get(key, values[-1]):.6g}", f"{min(values):.6g}", f"{max(values):.6g}",
               str(len(values)), f"{min(steps)}-{max(steps)}" if steps else "-"]
        if spark:
            row.append(render.sparkline(values))
        rows.append(row)
    render.table(title, columns, rows)


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@json_option
@with_registry
def tag(reg, ref: str, assignments: tuple[str, ...], as_json: bool) -> None:
    """Set tags on a version (a tag already set gets the new value).

    \b
    Examples:
      lorareg tag assistant@3 stage=candidate owner=ml-team
      lorareg ls --tag stage=candidate
    """
    tags = parse_assignments(assignments, what="KEY=VALUE", example="stage=candidate")
    reg.set_tags(ref=ref, tags=tags)
    tracked = reg.tracked(ref=ref)
    if as_json:
        render.print_json({"ref": tracked.ref, "tags": dict(tracked.tags)})
    else:
        click.echo(f"tagged {tracked.ref}: " + " ".join(f"{k}={v}" for k, v in sorted(tracked.tags.items())))


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@json_option
@with_registry
def untag(reg, ref: str, keys: tuple[str, ...], as_json: bool) -> None:
    """Remove tags from a version (all of them, or none if one is not set).

    \b
    Examples:
      lorareg untag assistant@3 stage
    """
    reg.untag(ref=ref, keys=keys)
    tracked = reg.tracked(ref=ref)
    if as_json:
        render.print_json({"ref": tracked.ref, "tags": dict(tracked.tags)})
    else:
        left = " ".join(f"{k}={v}" for k, v in sorted(tracked.tags.items())) or "no tags left"
        click.echo(f"untagged {tracked.ref}: {left}")


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@click.argument("assignments", nargs=-1, metavar="[KEY=VALUE...]")
@click.option("--step", type=int, help="The training step the values were measured at (when logging).")
@json_option
@utc_option
@with_registry
def metrics(reg, ref: str, assignments: tuple[str, ...], step: int | None, as_json: bool) -> None:
    """Show a version's metrics (latest, range, a sparkline over steps), or log new points.

    \b
    Examples:
      lorareg metrics chat@4
      lorareg metrics chat@4 eval_loss=0.41 eval_acc=0.87 --step 900
      lorareg metrics chat@4 --json | jq '.history[] | select(.key=="eval_loss")'
    """
    if assignments:
        values = parse_assignments(assignments, what="KEY=VALUE", example="eval_loss=0.41")
        try:
            numbers = {k: float(v) for k, v in values.items()}
        except ValueError:
            bad = next(f"{k}={v}" for k, v in values.items() if not _is_number(v))
            raise click.BadParameter(f"{bad!r}: a metric is a number", param_hint="KEY=VALUE") from None
        reg.log_metrics(ref=ref, metrics=numbers, step=step)
    tracked = reg.tracked(ref=ref)
    if as_json:
        render.print_json({"ref": tracked.ref, "metrics": dict(tracked.metrics),
                           "history": [p.to_dict() for p in tracked.history]})
        return
    if assignments:
        click.echo(f"logged on {tracked.ref}" + (f" at step {step}" if step is not None else "") + ": "
                   + " ".join(assignments))
        return
    if not tracked.history:
        click.echo(f"{tracked.ref} has no metrics; log some with: lorareg metrics {tracked.ref} eval_loss=0.41 "
                   f"--step 900", err=True)
        return
    metric_table(tracked)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@click.argument("assignments", nargs=-1, metavar="[KEY=VALUE...]")
@json_option
@with_registry
def params(reg, ref: str, assignments: tuple[str, ...], as_json: bool) -> None:
    """Show a version's params (hyper-parameters), or set some.

    Values are read as JSON when they parse (2e-4, 16, true, [1,2]), else kept as text.

    \b
    Examples:
      lorareg params chat@4
      lorareg params chat@4 learning_rate=2e-4 lora_r=16 optim=adamw_torch
    """
    if assignments:
        values = parse_assignments(assignments, what="KEY=VALUE", example="learning_rate=2e-4")
        reg.log_params(ref=ref, params={k: json_value(v) for k, v in values.items()})
    tracked = reg.tracked(ref=ref)
    if as_json:
        render.print_json({"ref": tracked.ref, "params": dict(tracked.params)})
        return
    if assignments:
        click.echo(f"set on {tracked.ref}: " + " ".join(assignments))
        return
    if not tracked.params:
        click.echo(f"{tracked.ref} has no params; set some with: lorareg params {tracked.ref} learning_rate=2e-4",
                   err=True)
        return
    render.table(None, [Column("param", keep=True), Column("value", fold=True)],
                 [[k, value_text(k, v)] for k, v in sorted(tracked.params.items())])


COMMANDS = [tag, untag, metrics, params]
