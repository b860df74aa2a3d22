"""init, add, ls, verify, log (show and alias have their own modules)."""

from __future__ import annotations

import click

from lorareg.cli import describe, render
from lorareg.cli.common import complete_ref, json_option, open_registry, utc_option, with_registry
from lorareg.cli.errors import HelpGroup, fail
from lorareg.cli.progress import folder_bytes
from lorareg.cli.render import Column
from lorareg.errors import LoraregError
from lorareg.registry.refs import KINDS

KIND_ARG = {**{k: k for k in KINDS}, **{f"{k}s": k for k in KINDS}}  # `ls merges` and `ls merge`


def _print_added(reg, info, as_json: bool) -> None:
    same = reg.same_content(ref=info.ref)
    if as_json:
        render.print_json({**info.to_dict(), "same_content": same})
        return
    verb = "already registered as" if info.existed else "added"
    click.echo(f"{verb} {info.ref}  {info.digest}")
    if info.path:
        click.echo(f"  path: {info.path}")
    if same:
        click.echo(f"  note: the same model is also registered as {', '.join(same)}")
    skipped = info.details.get("skipped_training_state")
    if skipped and not info.existed:
        click.echo(f"  skipped training state (not part of the model): {', '.join(skipped)}")


@click.command()
@json_option
@click.pass_context
def init(ctx: click.Context, as_json: bool) -> None:
    """Create (or upgrade) the registry at LORAREG_HOME.

    Every other command does this too; init is for saying where the registry lives.

    \b
    Examples:
      lorareg init
      LORAREG_HOME=/data/lorareg lorareg init --json
    """
    reg = open_registry(ctx)
    try:
        out = reg.location().to_dict()
    finally:
        reg.close()
    if as_json:
        render.print_json(out)
    else:
        click.echo(f"registry ready at {out['home']} ({out['database']})")
        if out.get("cache"):  # an object store, read through this machine's cache
            click.echo(f"  blobs: {out['blobs']} (this machine's cache: {out['cache']})")
        elif out["blobs"] != f"{out['home']}/blobs":  # a folder the team shares
            click.echo(f"  blobs: {out['blobs']}")


@click.group(cls=HelpGroup)
def add() -> None:
    """Register a base model or an adapter.

    \b
    Examples:
      lorareg add base ./Llama-3.2-1B --name llama
      lorareg add adapter ./runs/chat/checkpoint-900 --base llama --name chat
    """


def _hub_or_path(path: str) -> bool:
    return path.startswith("hf://")


def _hashing_bar(path: str, *, copies: bool):
    """A bar over the folder's bytes, read once: hashed and (unless tracked by reference) stored."""
    total = None if _hub_or_path(path) else folder_bytes(path)
    return render.progress("hashing and storing" if copies else "hashing", total=total)


@add.command("base")
@click.argument("path")
@click.option("--name", help="Name to register under (default: the folder's name, or its parent's for "
                             "folders like model/ or checkpoint-900/).")
@click.option("--reference", is_flag=True, help="Track the folder in place instead of copying it into the store.")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin (loaded with weights_only=True, converted).")
@click.option("--endpoint", envvar="HF_ENDPOINT", help="Hub endpoint for hf:// paths.")
@json_option
@with_registry
def add_base(reg, path: str, name: str | None, reference: bool, allow_pickle: bool, endpoint: str | None,
             as_json: bool) -> None:
    """Register a Hugging Face checkpoint folder (or hf://ORG/NAME[@REV]) as a base.

    \b
    Examples:
      lorareg add base ./Llama-3.2-1B --name llama
      lorareg add base ~/models/llama --reference          # hashed, left where it is
      lorareg add base hf://meta-llama/Llama-3.2-1B@main   # pinned to the commit main is now
    """
    with _hashing_bar(path, copies=not reference) as advance:
        if _hub_or_path(path):
            info = reg.add_base_from_hub(uri=path, name=name, reference=reference, allow_pickle=allow_pickle,
                                         endpoint=endpoint, progress=advance)
        else:
            info = reg.add_base(path=path, name=name, reference=reference, allow_pickle=allow_pickle, progress=advance)
    _print_added(reg, info, as_json)


@add.command("adapter")
@click.argument("path")
@click.option("--base", "base", required=True, shell_complete=complete_ref("base"),
              help="The base it was trained on (NAME, NAME@3, NAME@alias).")
@click.option("--name", help="Name to register under (default: the folder's name, or its parent's for "
                             "folders like adapter/ or checkpoint-900/).")
@click.option("--allow-pickle", is_flag=True, help="Accept adapter_model.bin (loaded with weights_only=True).")
@click.option("--endpoint", envvar="HF_ENDPOINT", help="Hub endpoint for hf:// paths.")
@json_option
@with_registry
def add_adapter(reg, path: str, base: str, name: str | None, allow_pickle: bool, endpoint: str | None,
                as_json: bool) -> None:
    """Register a PEFT adapter folder (or hf://ORG/NAME[@REV]) against a base.

    \b
    Examples:
      lorareg add adapter ./runs/chat/checkpoint-900 --base llama --name chat
      lorareg add adapter hf://acme/chat-lora --base llama
    """
    with _hashing_bar(path, copies=True) as advance:
        if _hub_or_path(path):
            info = reg.add_adapter_from_hub(uri=path, base=base, name=name, allow_pickle=allow_pickle,
                                            endpoint=endpoint, progress=advance)
        else:
            info = reg.add_adapter(path=path, base=base, name=name, allow_pickle=allow_pickle, progress=advance)
    _print_added(reg, info, as_json)


def _files_state(i) -> str:
    if i.removed_at is not None:
        return "removed"
    return "yes" if i.stored else ("ref" if i.kind == "base" else "recipe")


def _check_state(i) -> str:
    """A merge's latest `lorareg check`: passed, FAILED, or blank when it has none."""
    checks = i.details.get("checks") or []
    return "" if not checks else ("passed" if checks[-1]["passed"] else "FAILED")


# What `ls` shows, one entry per column: add a column by adding an entry.  `drop`: which go
# first on a narrow terminal (highest first); refs are never cut.
LS_COLUMNS = [
    (Column("ref", keep=True), lambda i: i.ref),
    (Column("kind", drop=1), lambda i: describe.made_label(i) + (" (removed)" if i.removed_at else "")),
    (Column("aliases", drop=2), lambda i: ",".join(i.aliases)),
    (Column("summary", fold=True), describe.summary),
    (Column("files", drop=3), _files_state),
    (Column("check", drop=4), _check_state),
    (Column("created", drop=5), lambda i: render.when(i.created_at)),
    (Column("disk", drop=6, justify="right"), lambda i: render.human_size(i.size_bytes if i.stored else 0)),
    (Column("digest", drop=9), lambda i: render.short(i.digest)),
]


def _tag_filters(items: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE, or KEY for any value", param_hint="--tag")
        out[key] = value if sep else None
    return out


def _value_text(v) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}" if isinstance(v, float) else describe.value_text("", v)


LS_PAGE = 50  # versions on a terminal page


@click.command("ls")
@click.argument("kind", required=False, type=click.Choice(sorted(KIND_ARG)))
@click.option("--name", shell_complete=complete_ref(), help="Only versions of this name.")
@click.option("--where", "where", multiple=True, metavar="EXPR",
              help='Keep versions whose metric or param compares true: "eval_loss<0.5", "param.lr>=1e-4", '
                   '"optim=adamw" (< <= > >= = !=; repeatable, all must hold).')
@click.option("--tag", "tags", multiple=True, metavar="KEY[=VALUE]",
              help="Keep versions with this tag (and value); repeatable.")
@click.option("--sort", metavar="KEY", help="Sort by a metric or param (or created, name, size); -KEY: largest first. "
                                            "Versions without it come last.")
@click.option("--desc", is_flag=True, help="Sort largest first.")
@click.option("--removed", is_flag=True,
              help="List removed versions too (those something was made from are always listed).")
@click.option("--pushed", is_flag=True, help="Show where each version lives on the Hub.")
@click.option("-n", "--limit", type=click.IntRange(min=1),
              help=f"At most this many versions (on a terminal: {LS_PAGE} unless given).")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many versions first.")
@click.option("--after", metavar="REF", shell_complete=complete_ref(),
              help="The versions registered before REF, newest first (REF: the last one of the previous page). "
                   "Stays exact at any depth while versions are added; not with --sort KEY (use --offset).")
@json_option
@utc_option
@with_registry
def ls(reg, kind: str | None, name: str | None, where: tuple[str, ...], tags: tuple[str, ...], sort: str | None,
       desc: bool, removed: bool, pushed: bool, limit: int | None, offset: int, after: str | None,
       as_json: bool) -> None:
    """List registered versions: on a terminal a page of the newest first; piped or with --json,
    every version (bases, then adapters, then merges) unless --limit is given.

    On a terminal the table fits the window: refs are never cut; columns are dropped or
    folded instead, and a last line says how many more there are and how to see them
    (newest first: --after the last ref shown; sorted by a key: --offset).
    Piped, every column is printed as plain text.

    \b
    Examples:
      lorareg ls
      lorareg ls --after chat@3               # the next page: what was registered before chat@3
      lorareg ls --offset 50                  # or by position
      lorareg ls merges --sort eval_loss
      lorareg ls --where "eval_loss<0.5" --tag stage=candidate --sort eval_loss
      lorareg --json ls adapters | jq -r '.[].ref'
      lorareg ls --limit 100 --offset 200 | awk '{print $1}'
    """
    paged = render.is_terminal() and not as_json  # what a person reads: a page, newest first
    if paged and limit is None:
        limit = LS_PAGE
    if (paged or after) and not sort:
        sort = "-created"
    filters = dict(kind=KIND_ARG.get(kind) if kind else None, name=name, where=where, tags=_tag_filters(tags),
                   removed=removed)
    hits = reg.query(**filters, sort=sort, descending=desc, limit=limit, offset=offset, after=after)
    pushes: dict[str, list] = {}
    for p in reg.pushes() if pushed else ():
        pushes.setdefault(p.ref, []).append(p)
    if as_json:
        out = []
        for h in hits:
            o = h.info.to_dict()
            if h.values:
                o["values"] = dict(h.values)
            if pushed:
                o["pushes"] = [p.to_dict() for p in pushes.get(h.ref, [])]
            out.append(o)
        render.print_json(out)
        return
    if not hits:
        if offset or after:
            where_from = " and ".join(x for x in (f"older than {after}" if after else "",
                                                 f"from offset {offset} on" if offset else "") if x)
            click.echo(f"no versions {where_from} ({reg.count(**filters)} match)", err=True)
            return
        _say_nothing_matched(reg, kind=kind, name=name, filtered=bool(where or tags))
        return
    # Every column as (Column, hit -> text); the values --where/--sort judged by sit after the summary.
    columns = [(col, lambda h, f=f: f(h.info)) for col, f in LS_COLUMNS]
    at = next(n for n, (c, _) in enumerate(columns) if c.header == "summary") + 1
    columns[at:at] = [(Column(label, drop=3, justify="right"), lambda h, key=label: _value_text(h.values.get(key)))
                      for label in hits[0].values]
    if pushed:
        columns.append((Column("hub", drop=4),
                        lambda h: " ".join(f"{p.repo_id}@{p.tag}" for p in pushes.get(h.ref, [])) or "-"))
    rows = [[text(h) for _, text in columns] for h in hits]
    render.table(None, [c for c, _ in columns], rows)
    if paged and len(hits) == limit:
        newest_first = sort == "-created" or (sort == "created" and desc)
        last = hits[-1].ref
        more = reg.count(**filters, after=last) if newest_first else reg.count(**filters) - offset - len(hits)
        if more > 0:
            nxt = ["--after", last] if newest_first else ["--offset", str(offset + limit)]
            click.echo(f"{more} more: {_ls_again(kind, name, where, tags, sort, desc, removed, pushed, limit, nxt)}")


def _ls_again(kind, name, where, tags, sort, desc, removed, pushed, limit, nxt: list[str]) -> str:
    """The ``lorareg ls`` that shows the next page: the same filters, then ``nxt`` (a cursor
    past the last ref shown when newest first, which stays exact while versions are added; else
    the next offset)."""
    import shlex

    words = ["lorareg", "ls"] + ([kind] if kind else []) + (["--name", name] if name else [])
    words += [w for expr in where for w in ("--where", expr)] + [w for t in tags for w in ("--tag", t)]
    newest_first = sort == "-created" or (sort == "created" and desc)
    words += (["--sort", sort] if sort and not newest_first else []) + (["--desc"] if desc and not newest_first else [])
    words += (["--removed"] if removed else []) + (["--pushed"] if pushed else [])
    words += (["--limit", str(limit)] if limit != LS_PAGE else []) + nxt
    return shlex.join(words)


def _say_nothing_matched(reg, *, kind: str | None, name: str | None, filtered: bool) -> None:
    total = reg.count()
    if total == 0:
        click.echo("nothing registered yet; start with: lorareg add base PATH", err=True)
        return
    asked = " ".join(x for x in (kind, f"--name {name}" if name else "", "with those filters" if filtered else "") if x)
    line = f"no versions match {asked} ({total} registered)"
    if name:
        try:
            reg.get(ref=name)
        except LoraregError as exc:  # the same suggestion an unknown reference gets
            line += f"; {exc.hint}" if exc.hint and exc.hint.startswith("did you mean") else ""
    click.echo(line, err=True)


@click.command()
@click.argument("ref", required=False, shell_complete=complete_ref())
@click.option("--all", "all_", is_flag=True, help="Verify every version and every blob.")
@json_option
@with_registry
def verify(reg, ref: str | None, all_: bool, as_json: bool) -> None:
    """Re-hash stored files (or referenced folders) and compare with what was recorded.

    \b
    Examples:
      lorareg verify chat@1
      lorareg verify --all
    """
    total = reg.get(ref=ref).size_bytes if ref and not all_ else None
    with render.progress("verifying", total=total) as advance:
        results = reg.verify(ref=ref, all_versions=all_, progress=advance)
    if as_json:
        render.print_json([r.to_dict() for r in results])
    else:
        for r in results:
            click.echo(f"{'ok ' if r.ok else 'BAD'}  {r.ref}  ({r.checked_files} files)")
            for p in r.problems:
                click.echo(f"     {p}")
    bad = [r for r in results if not r.ok]
    if bad and as_json:  # the results say ok: false; a second JSON document would break the parser
        raise SystemExit(1)
    if bad:
        fail(f"{len(bad)} of {len(results)} checked versions failed verification",
             "restore the files, or re-add the version; lorareg gc removes blobs nothing references")


def _event_details(args) -> str:
    parts = []
    for k, v in sorted(args.items()):
        if v is None or v == [] or k in ("kind",):
            continue
        if k == "digest" and isinstance(v, str):
            v = render.short(v)
        text = ",".join(map(str, v)) if isinstance(v, list) else describe.value_text(k, v)
        parts.append(f'{k}="{text}"' if " " in text else f"{k}={text}")
    return " ".join(parts)


@click.command()
@click.argument("ref", required=False, shell_complete=complete_ref())
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="How many events to show, newest first.")
@json_option
@utc_option
@with_registry
def log(reg, ref: str | None, limit: int, as_json: bool) -> None:
    """Show events (who did what, when), newest first: adds, merges, rollbacks, alias moves, removals.

    \b
    Examples:
      lorareg log
      lorareg log assistant -n 10
      lorareg log --utc | grep rollback
    """
    events = reg.log(ref=ref, limit=limit)
    if as_json:
        render.print_json([e.to_dict() for e in events])
        return
    render.table(None, [Column("time", drop=1), Column("user", drop=3), Column("action"), Column("ref", keep=True),
                        Column("details", fold=True, drop=2, wants=36)],
                 [[render.when(e.time, seconds=True), e.user, e.action, e.ref, _event_details(e.args)] for e in events])


COMMANDS = [init, add, ls, verify, log]
