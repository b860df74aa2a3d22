"""merge, export, rebuild, rollback, lineage, diff, gc."""

from __future__ import annotations

import click

from lorareg.cli import describe, render
from lorareg.cli.common import complete_ref, json_option, with_registry
from lorareg.cli.errors import fail
from lorareg.cli.method_options import method_choice, method_param_options, methods_epilog, take_method_params
from lorareg.cli.render import Column
from lorareg.registry.recipe import ADAPTER_DTYPES, DTYPES, OUTPUTS


def _size(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10,
             "mib": 2**20, "gib": 2**30}
    t = text.strip().lower()
    try:
        for u in sorted(units, key=len, reverse=True):
            if t.endswith(u):
                return int(float(t[: -len(u)]) * units[u])
        return int(t)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 5GiB, 500MB, 2000000000)",
                                 param_hint="--max-shard-size") from None


def _print_made(reg, info, verb: str) -> None:
    """What a merge or rollback made, what it reported, and whether a bare NAME means it."""
    click.echo(f"{verb} {info.ref} ({describe.kind_label(info)})  {info.digest}")
    for note in info.details.get("outcome", {}).get("notes", []):
        click.echo(f"  note: {note}")
    click.echo(f"  path: {info.path}" if info.path else "  kept as recipe only")
    current = reg.get(ref=info.name)
    if current.version != info.version:
        click.echo(f"  note: {info.name}@current still points at {current.ref}, so `{info.name}` means "
                   f"{current.ref}; make this one current with: lorareg alias set {info.name} current {info.version}")


@click.command(epilog=methods_epilog())
@click.argument("base", shell_complete=complete_ref("base"))
@click.argument("adapters", nargs=-1, required=True, metavar="ADAPTER[:WEIGHT]...",
                shell_complete=complete_ref("adapter"))
@click.option("--name", required=True, help="Name of the merged model (a new version each new recipe).")
@click.option("--method", type=method_choice(), default="linear", show_default=True,
              help="How several adapters combine (listed below).")
@method_param_options
@click.option("--seed", type=int, help="Seed for random methods (default: chosen and recorded).")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Output dtype (auto: the base's).")
@click.option("--adapter-dtype", type=click.Choice(ADAPTER_DTYPES), default="float32", show_default=True,
              help="float32: PeftModel.from_pretrained parity; base: round A and B to the base dtype first.")
@click.option("--as-adapter", type=click.Choice([o for o in OUTPUTS if o != "model"]),
              help="Write the combination as a new adapter (cat: exact; svd: rank --rank).")
@click.option("--rank", type=int, help="Rank for --as-adapter svd.")
@click.option("--keep", type=click.Choice(["files", "recipe"]), default="files", show_default=True,
              help="recipe: record the recipe and digest only; files are rebuilt when needed.")
@click.option("--max-shard-size", default="5GiB", show_default=True,
              help="Largest output shard before a new one starts (5GiB, 500MB, or bytes).")
@click.option("--allow-base-mismatch", is_flag=True, help="Merge adapters registered against another base (shapes must fit).")
@click.option("--tokenizer-from", metavar="REF",
              help="Take tokenizer, chat template and generation config from this input (an adapter or the "
                   "base); needed when adapters carry different ones.")
@click.option("--allow-noop", is_flag=True,
              help="Merge even an untrained adapter, or deltas that round away (recorded in the recipe).")
@click.option("--base-quantization", type=click.Choice(["nf4", "fp4"]),
              help="QLoRA adapters: merge into the base as bitsandbytes 4-bit quantizes it (what training saw).")
@click.option("--double-quant", is_flag=True, help="With --base-quantization: bnb_4bit_use_double_quant.")
@click.option("--blocksize", type=int, help="With --base-quantization: bitsandbytes' blocksize (default 64).")
@click.option("-m", "--message", help="Why this version exists (shown by show and log).")
@json_option
@with_registry
def merge(reg, base, adapters, name, method, seed, dtype, adapter_dtype, as_adapter, rank, keep, max_shard_size,
          allow_base_mismatch, tokenizer_from, allow_noop, base_quantization, double_quant, blocksize, message,
          as_json, **method_params) -> None:
    """Merge ADAPTER[:WEIGHT]... into BASE and register the result as NAME's next version.

    \b
    Examples:
      lorareg merge llama chat code:0.5 --name assistant -m "chat + some code"
      lorareg merge llama chat code --name assistant --method ties --density 0.5
      lorareg merge llama chat code:0.5 --name combo --as-adapter cat
      lorareg merge llama chat --name lean --keep recipe
    """
    shard = _size(max_shard_size)
    if base_quantization is None and (double_quant or blocksize is not None):
        raise click.UsageError("--double-quant and --blocksize go with --base-quantization nf4|fp4")
    quantization = None if base_quantization is None else {
        "quant_type": base_quantization, "double_quant": double_quant, "blocksize": blocksize or 64}
    with render.step_progress("merging") as update:
        info = reg.merge(base=base, adapters=list(adapters), name=name, method=method,
                         params=take_method_params(method_params), seed=seed, dtype=dtype,
                         adapter_dtype=adapter_dtype, as_adapter=as_adapter, rank=rank, keep=keep,
                         allow_base_mismatch=allow_base_mismatch, max_shard_size=shard,
                         tokenizer_from=tokenizer_from, allow_noop=allow_noop, base_quantization=quantization,
                         message=message, progress=update)
    if as_json:
        render.print_json(info.to_dict())
        return
    _print_made(reg, info, "already merged as" if info.existed else "merged")


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--copy", "copy", is_flag=True,
              help="Copy the bytes instead of linking the store's read-only blobs (a folder to edit in place), "
                   "e.g. lorareg export assistant@3 ./assistant-v3 --copy")
@json_option
@with_registry
def export(reg, ref, dest, copy, as_json) -> None:
    """Write REF's files to DEST as a standalone folder (rebuilt first if kept as recipe only).

    On the store's file system this takes no time whatever the size: each file is a reflink
    (copy on write) or a hard link to the store's read-only blob; on another file system, or
    with --copy, the bytes are copied.

    \b
    Examples:
      lorareg export assistant@3 ./assistant-v3
      lorareg export assistant@3 /mnt/other-disk/assistant-v3 --copy
      python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('./assistant-v3')"
    """
    from contextlib import ExitStack

    with ExitStack() as copying, ExitStack() as rebuilding:
        update = rebuilding.enter_context(
            render.step_progress("rebuilding", starting="starting: reading the recipe and its inputs"))
        advance = None

        def copied(n: int, total: int) -> None:
            nonlocal advance
            if advance is None:  # one live bar at a time: any rebuild is over when copying starts
                rebuilding.close()
                advance = copying.enter_context(render.progress("copying", total=total))
            advance(n)

        info = reg.export(ref=ref, dest=dest, copy=copy, progress=update, copy_progress=copied)
    render.print_json({"ref": info.ref, "digest": info.digest, "path": dest}) if as_json else click.echo(
        f"exported {info.ref} to {dest}")


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@click.option("--keep-files", is_flag=True, help="Store the rebuilt files if the version was kept as recipe only.")
@json_option
@with_registry
def rebuild(reg, ref, keep_files, as_json) -> None:
    """Re-run REF's recorded recipe and check the output digest.

    \b
    Examples:
      lorareg rebuild assistant@1
      lorareg rebuild lean@1 --keep-files      # a recipe-only version gets its files back
    """
    with render.step_progress("rebuilding") as update:
        res = reg.rebuild(ref=ref, keep_files=keep_files, progress=update)
    if as_json:
        render.print_json(res.to_dict())
    elif res.ok:
        click.echo(f"rebuilt {res.ref}: digest matches {res.recorded_digest}")
    else:
        click.echo(f"rebuilt {res.ref}: digest {res.rebuilt_digest} != recorded {res.recorded_digest}")
        render.table("tensors that differ", [Column("tensor", keep=True), Column("elements", justify="right"),
                                             Column("max abs", justify="right"), Column("max ulp", justify="right"),
                                             Column("note", fold=True)],
                     [[d.name, d.elements_differing, f"{d.max_abs:.3g}", d.max_ulp, d.note] for d in res.tensors])
        for lib, ch in res.library_changes.items():
            click.echo(f"  {lib}: recorded {ch['recorded']}, running {ch['running']}")
    if not res.ok and as_json:  # ok: false is in the JSON already; one document on stdout
        raise SystemExit(1)
    if not res.ok:
        fail(f"rebuild of {res.ref} does not match its recorded digest",
             "the differing tensors and library versions are listed above")


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@click.option("--adapter", help="Take this adapter out of the merge (a new version).")
@click.option("--to", "to", type=int, help="Move the alias back to this version (instant; nothing is rebuilt).")
@click.option("--alias", "alias_name", default="current", show_default=True,
              help="The alias --to moves (current: what a bare NAME means).")
@click.option("--strategy", type=click.Choice(["rebuild", "subtract"]), default="rebuild", show_default=True,
              help="rebuild: from the base, exact; subtract: from the merged weights alone (linear merges).")
@click.option("-m", "--message", help="Why (added to the automatic note in show and log).")
@json_option
@with_registry
def rollback(reg, ref, adapter, to, alias_name, strategy, message, as_json) -> None:
    """Take an adapter out of a merge (REF --adapter X) or move an alias back (NAME --to 3).

    \b
    Examples:
      lorareg rollback assistant@3 --adapter code -m "code regressed"
      lorareg rollback assistant@3 --adapter code --strategy subtract
      lorareg rollback assistant --to 2
      lorareg rollback assistant --to 1 --alias prod
    """
    if (adapter is None) == (to is None):
        fail("say what to roll back", "lorareg rollback REF --adapter NAME, or NAME --to VERSION")
    if to is not None:
        moved = reg.rollback_alias(name=ref.partition("@")[0], to=to, alias=alias_name, message=message)
        if as_json:
            render.print_json(moved.to_dict())
            return
        click.echo(f"{moved.name}@{moved.alias} -> {moved.version}")
        if alias_name == "current":
            click.echo(f"  note: `{moved.name}` now means {moved.name}@{moved.version}, also after later merges; "
                       f"undo with: lorareg alias rm {moved.name} current")
        return
    with render.step_progress("rolling back") as update:
        out = reg.rollback_adapter(ref=ref, adapter=adapter, strategy=strategy, message=message, progress=update)
    if as_json:
        render.print_json(out.to_dict())
        return
    _print_made(reg, out, "rolled back:")
    dev = out.details.get("outcome", {}).get("subtract_deviation")
    if dev:
        render.key_values("subtraction vs an exact rebuild", describe.deviation_pairs(dev))


LINEAGE_CHILDREN = 20  # --down: versions drawn under each one, newest first, unless --limit/--all
LINEAGE_NODES = 200  # --down: versions drawn in all (the web view's lineage page draws as many)


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@click.option("--down", is_flag=True, help="Show what was derived from REF instead.")
@click.option("-n", "--limit", type=click.IntRange(min=1),
              help=f"With --down: at most this many versions under each one, newest first "
                   f"(default {LINEAGE_CHILDREN}; {LINEAGE_NODES} in all).")
@click.option("--all", "all_", is_flag=True, help="With --down: every version made from REF, however many.")
@json_option
@with_registry
def lineage(reg, ref, down, limit, all_, as_json) -> None:
    """Draw where REF came from (or, with --down, what came from it).

    What REF came from is always drawn whole.  What came from it can be a whole registry (a
    base with 100,000 adapters): --down draws the newest versions under each one and a line
    saying how many more there are; --json holds the same page, with "more" counting what
    was left out under each ref.

    \b
    Examples:
      lorareg lineage assistant@3
      lorareg lineage llama --down
      lorareg lineage llama --down --limit 100
      lorareg --json lineage llama --down --all | jq -r '.nodes[].ref'
    """
    if all_ and limit:
        raise click.UsageError("--all draws every version; --limit draws a page: give one of them")
    if all_ or not down:
        g = reg.lineage(ref=ref, down=down)
    else:
        g = reg.lineage(ref=ref, down=True, per_node=limit or LINEAGE_CHILDREN, max_nodes=LINEAGE_NODES)
    if as_json:
        render.print_json(g.to_dict())
        return
    render.tree(g, more=lambda r, n: f"… and {n:,} more (all: lorareg lineage {r} --down --all)")


@click.command()
@click.argument("a", shell_complete=complete_ref())
@click.argument("b", shell_complete=complete_ref())
@json_option
@with_registry
def diff(reg, a, b, as_json) -> None:
    """Compare two merges' recipes (two bases' or adapters' configs) and, when both have files, their tensors.

    A model and an adapter share no tensor: that comparison is refused.

    \b
    Examples:
      lorareg diff assistant@1 assistant@3
      lorareg diff llama assistant@3        # which tensors the merge changed
      lorareg diff chat@1 chat@2
    """
    d = reg.diff(a=a, b=b)
    if as_json:
        render.print_json(d.to_dict())
        return
    same_weights = getattr(d, "same_weights", d.same_digest)
    state = "same digest" if d.same_digest else ("same weights, other files" if same_weights else "different digests")
    click.echo(f"{d.a} vs {d.b}: {state}")
    for change in d.recipe:
        for line in describe.recipe_change_lines(change.field, change.a, change.b):
            click.echo(f"  {line}")
    if d.tensors is None:
        click.echo("  tensors: not compared (a side has no files: kept as recipe only, or removed)")
    elif d.tensors:
        render.table(f"tensors that differ ({len(d.tensors)})",
                     [Column("tensor", keep=True), Column("elements", justify="right"),
                      Column("max abs", justify="right"), Column("max ulp", justify="right", drop=1)],
                     [[t.name, t.elements_differing if t.elements_differing >= 0 else "missing",
                       f"{t.max_abs:.3g}", t.max_ulp if t.max_ulp >= 0 else "-"] for t in d.tensors])


@click.command()
@click.option("--evict", multiple=True, shell_complete=complete_ref("merge"),
              help="Keep this merge as recipe only (repeatable).")
@click.option("--merges-older-than", type=float, metavar="DAYS",
              help="Evict merges older than DAYS (aliased ones are kept).")
@click.option("--dry-run", is_flag=True, help="Say what would be freed and evicted; change nothing.")
@json_option
@with_registry
def gc(reg, evict, merges_older_than, dry_run, as_json) -> None:
    """Remove blobs nothing references (and stale temp files); optionally evict merges to recipe only.

    \b
    Examples:
      lorareg gc --dry-run
      lorareg gc --evict assistant@1
      lorareg gc --merges-older-than 30
    """
    res = reg.gc(evict=evict, merges_older_than_days=merges_older_than, dry_run=dry_run)
    if as_json:
        render.print_json(res.to_dict())
        return
    if dry_run:
        click.echo(f"would free {render.human_size(res.bytes_freed)} ({res.blobs_removed} blobs, "
                   f"{res.temp_files_removed} temp files); nothing was changed")
        for r in res.evicted:
            click.echo(f"  would evict {r} (its recipe would be kept; rebuilt when needed)")
        return
    click.echo(f"freed {render.human_size(res.bytes_freed)} ({res.blobs_removed} blobs, "
               f"{res.temp_files_removed} temp files)"
               + (f"; cleared {res.leases_expired} expired writer lease(s)" if res.leases_expired else ""))
    for r in res.evicted:
        click.echo(f"  evicted {r} (recipe kept; rebuilt when needed)")


COMMANDS = [merge, export, rebuild, rollback, lineage, diff, gc]
