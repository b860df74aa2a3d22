"""merge, export, rebuild, rollback, lineage, diff, gc."""

from __future__ import annotations

import click

from lorareg.cli import render
from lorareg.cli.common import json_option, with_registry
from lorareg.cli.errors import fail
from lorareg.cli.method_options import method_choice, method_param_options, methods_epilog, take_method_params
from lorareg.registry.recipe import ADAPTER_DTYPES, DTYPES, OUTPUTS


def _size(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10,
             "mib": 2**20, "gib": 2**30}
    t = text.strip().lower()
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            return int(float(t[: -len(u)]) * units[u])
    return int(t)


@click.command(epilog=methods_epilog())
@click.argument("base")
@click.argument("adapters", nargs=-1, required=True)
@click.option("--name", required=True, help="Name of the merged model (a new version each new recipe).")
@click.option("--method", type=method_choice(), default="linear", show_default=True)
@method_param_options
@click.option("--seed", type=int, help="Seed for random methods (default: chosen and recorded).")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Output dtype (auto: the base's).")
@click.option("--adapter-dtype", type=click.Choice(ADAPTER_DTYPES), default="float32", show_default=True,
              help="float32: PeftModel.from_pretrained parity; base: round A and B to the base dtype first.")
@click.option("--as-adapter", type=click.Choice([o for o in OUTPUTS if o != "model"]),
              help="Write the combination as a new adapter.")
@click.option("--rank", type=int, help="Rank for --as-adapter svd.")
@click.option("--keep", type=click.Choice(["files", "recipe"]), default="files", show_default=True,
              help="recipe: record the recipe and digest only; files are rebuilt when needed.")
@click.option("--max-shard-size", default="5GiB", show_default=True)
@click.option("--allow-base-mismatch", is_flag=True, help="Merge adapters registered against another base (shapes must fit).")
@click.option("-m", "--message", help="Why this version exists.")
@json_option
@with_registry
def merge(reg, base, adapters, name, method, seed, dtype, adapter_dtype, as_adapter, rank, keep, max_shard_size,
          allow_base_mismatch, message, as_json, **method_params) -> None:
    """Merge ADAPTER[:WEIGHT]... into BASE and register the result as NAME's next version."""
    with render.step_progress("merging") as update:
        info = reg.merge(base=base, adapters=list(adapters), name=name, method=method,
                         params=take_method_params(method_params), seed=seed, dtype=dtype,
                         adapter_dtype=adapter_dtype, as_adapter=as_adapter, rank=rank, keep=keep,
                         allow_base_mismatch=allow_base_mismatch, max_shard_size=_size(max_shard_size),
                         message=message, progress=update)
    if as_json:
        render.print_json(info.to_dict())
        return
    click.echo(f"{'already merged as' if info.existed else 'merged'} {info.ref}  {info.digest}")
    for note in info.details.get("outcome", {}).get("notes", []):
        click.echo(f"  note: {note}")
    click.echo(f"  path: {info.path}" if info.path else "  kept as recipe only")


@click.command()
@click.argument("ref")
@click.argument("dest", type=click.Path(file_okay=False))
@json_option
@with_registry
def export(reg, ref, dest, as_json) -> None:
    """Write REF's files to DEST as a standalone folder (rebuilt first if kept as recipe only)."""
    with render.step_progress("rebuilding") as update:
        info = reg.export(ref=ref, dest=dest, progress=update)
    render.print_json({"ref": info.ref, "digest": info.digest, "path": dest}) if as_json else click.echo(
        f"exported {info.ref} to {dest}")


@click.command()
@click.argument("ref")
@click.option("--keep-files", is_flag=True, help="Store the rebuilt files if the version was kept as recipe only.")
@json_option
@with_registry
def rebuild(reg, ref, keep_files, as_json) -> None:
    """Re-run REF's recorded recipe and check the output digest."""
    with render.step_progress("rebuilding") as update:
        res = reg.rebuild(ref=ref, keep_files=keep_files, progress=update)
    if as_json:
        render.print_json(res.to_dict())
    elif res.ok:
        click.echo(f"rebuilt {res.ref}: digest matches {res.recorded_digest}")
    else:
        click.echo(f"rebuilt {res.ref}: digest {res.rebuilt_digest} != recorded {res.recorded_digest}")
        render.table("tensors that differ", ["tensor", "elements", "max abs", "max ulp", "note"],
                     [[d.name, d.elements_differing, f"{d.max_abs:.3g}", d.max_ulp, d.note] for d in res.tensors])
        for lib, ch in res.library_changes.items():
            click.echo(f"  {lib}: recorded {ch['recorded']}, running {ch['running']}")
    if not res.ok:
        fail(f"rebuild of {res.ref} does not match its recorded digest",
             "the differing tensors and library versions are listed above")


@click.command()
@click.argument("ref")
@click.option("--adapter", help="Take this adapter out of the merge (a new version).")
@click.option("--to", "to", type=int, help="Move the alias back to this version.")
@click.option("--alias", "alias_name", default="current", show_default=True)
@click.option("--strategy", type=click.Choice(["rebuild", "subtract"]), default="rebuild", show_default=True)
@click.option("-m", "--message", help="Why.")
@json_option
@with_registry
def rollback(reg, ref, adapter, to, alias_name, strategy, message, as_json) -> None:
    """Take an adapter out of a merge (REF --adapter X) or move an alias back (NAME --to 3)."""
    if (adapter is None) == (to is None):
        fail("say what to roll back", "lorareg rollback REF --adapter NAME, or NAME --to VERSION")
    if to is not None:
        moved = reg.rollback_alias(name=ref.partition("@")[0], to=to, alias=alias_name, message=message)
        render.print_json(moved.to_dict()) if as_json else click.echo(f"{moved.name}@{moved.alias} -> {moved.version}")
        return
    with render.step_progress("rolling back") as update:
        out = reg.rollback_adapter(ref=ref, adapter=adapter, strategy=strategy, message=message, progress=update)
    if as_json:
        render.print_json(out.to_dict())
        return
    click.echo(f"rolled back: {out.ref}  {out.digest}")
    dev = out.details.get("outcome", {}).get("subtract_deviation")
    if dev:
        click.echo(f"  deviation from an exact rebuild: {dev}")


@click.command()
@click.argument("ref")
@click.option("--down", is_flag=True, help="Show what was derived from REF instead.")
@json_option
@with_registry
def lineage(reg, ref, down, as_json) -> None:
    """Draw where REF came from (or, with --down, what came from it)."""
    g = reg.lineage(ref=ref, down=down)
    if as_json:
        render.print_json(g.to_dict())
        return
    render.tree(g)


@click.command()
@click.argument("a")
@click.argument("b")
@json_option
@with_registry
def diff(reg, a, b, as_json) -> None:
    """Compare two versions' recipes and, if both have files, their tensors."""
    d = reg.diff(a=a, b=b)
    if as_json:
        render.print_json(d.to_dict())
        return
    click.echo(f"{d.a} vs {d.b}: {'same digest' if d.same_digest else 'different digests'}")
    for change in d.recipe:
        click.echo(f"  {change.field}: {change.a} -> {change.b}")
    if d.tensors:
        render.table("tensors that differ", ["tensor", "elements", "max abs", "max ulp"],
                     [[t.name, t.elements_differing, f"{t.max_abs:.3g}", t.max_ulp] for t in d.tensors])


@click.command()
@click.option("--evict", multiple=True, help="Keep this merge as recipe only (repeatable).")
@click.option("--merges-older-than", type=float, help="Evict merges older than DAYS (aliased ones are kept).")
@click.option("--dry-run", is_flag=True)
@json_option
@with_registry
def gc(reg, evict, merges_older_than, dry_run, as_json) -> None:
    """Remove blobs nothing references (and stale temp files); optionally evict merges to recipe only."""
    res = reg.gc(evict=evict, merges_older_than_days=merges_older_than, dry_run=dry_run)
    if as_json:
        render.print_json(res.to_dict())
        return
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {render.human_size(res.bytes_freed)} ({res.blobs_removed} blobs, "
               f"{res.temp_files_removed} temp files)")
    for r in res.evicted:
        click.echo(f"  evicted {r} (recipe kept; rebuilt when needed)")


COMMANDS = [merge, export, rebuild, rollback, lineage, diff, gc]
