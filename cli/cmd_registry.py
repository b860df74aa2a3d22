"""init, add, ls, show, verify, log, alias."""

from __future__ import annotations

import click

from lorareg.cli import render
from lorareg.cli.common import json_option, open_registry, with_registry
from lorareg.cli.errors import fail
from lorareg.registry.refs import KINDS

KIND_ARG = {**{k: k for k in KINDS}, **{f"{k}s": k for k in KINDS}}  # `ls merges` and `ls merge`


def _print_added(info, as_json: bool) -> None:
    if as_json:
        render.print_json(info.to_dict())
        return
    verb = "already registered as" if info.existed else "added"
    click.echo(f"{verb} {info.ref}  {info.digest}")
    if info.path:
        click.echo(f"  path: {info.path}")


@click.command()
@json_option
@click.pass_context
def init(ctx: click.Context, as_json: bool) -> None:
    """Create (or upgrade) the registry at LORAREG_HOME."""
    reg = open_registry(ctx)
    try:
        out = reg.location().to_dict()
    finally:
        reg.close()
    if as_json:
        render.print_json(out)
    else:
        click.echo(f"registry ready at {out['home']} ({out['database']})")


@click.group()
def add() -> None:
    """Register a base model or an adapter."""


def _hub_or_path(path: str) -> bool:
    return path.startswith("hf://")


@add.command("base")
@click.argument("path")
@click.option("--name", help="Name to register under (default: derived from the folder).")
@click.option("--reference", is_flag=True, help="Track the folder in place instead of copying it into the store.")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin (loaded with weights_only=True, converted).")
@click.option("--endpoint", envvar="HF_ENDPOINT", help="Hub endpoint for hf:// paths.")
@json_option
@with_registry
def add_base(reg, path: str, name: str | None, reference: bool, allow_pickle: bool, endpoint: str | None,
             as_json: bool) -> None:
    """Register a Hugging Face checkpoint folder (or hf://ORG/NAME[@REV]) as a base."""
    with render.progress("hashing") as advance:
        if _hub_or_path(path):
            info = reg.add_base_from_hub(uri=path, name=name, reference=reference, allow_pickle=allow_pickle,
                                         endpoint=endpoint, progress=advance)
        else:
            info = reg.add_base(path=path, name=name, reference=reference, allow_pickle=allow_pickle, progress=advance)
    _print_added(info, as_json)


@add.command("adapter")
@click.argument("path")
@click.option("--base", "base", required=True, help="The base it was trained on (NAME, NAME@3, NAME@alias).")
@click.option("--name", help="Name to register under (default: derived from the folder).")
@click.option("--allow-pickle", is_flag=True, help="Accept adapter_model.bin (loaded with weights_only=True).")
@click.option("--endpoint", envvar="HF_ENDPOINT", help="Hub endpoint for hf:// paths.")
@json_option
@with_registry
def add_adapter(reg, path: str, base: str, name: str | None, allow_pickle: bool, endpoint: str | None,
                as_json: bool) -> None:
    """Register a PEFT adapter folder (or hf://ORG/NAME[@REV]) against a base."""
    with render.progress("hashing") as advance:
        if _hub_or_path(path):
            info = reg.add_adapter_from_hub(uri=path, base=base, name=name, allow_pickle=allow_pickle,
                                            endpoint=endpoint, progress=advance)
        else:
            info = reg.add_adapter(path=path, base=base, name=name, allow_pickle=allow_pickle, progress=advance)
    _print_added(info, as_json)


@click.command("ls")
@click.argument("kind", required=False, type=click.Choice(sorted(KIND_ARG)))
@click.option("--name", help="Only versions of this name.")
@click.option("--pushed", is_flag=True, help="Show where each version lives on the Hub.")
@json_option
@with_registry
def ls(reg, kind: str | None, name: str | None, pushed: bool, as_json: bool) -> None:
    """List registered versions."""
    infos = reg.ls(kind=KIND_ARG.get(kind) if kind else None, name=name)
    pushes: dict[str, list] = {}
    for p in reg.pushes() if pushed else ():
        pushes.setdefault(p.ref, []).append(p)
    if as_json:
        out = [i.to_dict() for i in infos]
        if pushed:
            for o in out:
                o["pushes"] = [p.to_dict() for p in pushes.get(o["ref"], [])]
        render.print_json(out)
        return
    if not infos:
        click.echo("nothing registered yet; start with: lorareg add base PATH")
        return
    rows = []
    for i in infos:
        what = _what(i)
        row = [i.ref, i.kind, ",".join(i.aliases), render.short(i.digest), what,
               "yes" if i.stored else ("ref" if i.kind == "base" else "recipe"), render.human_size(i.size_bytes if i.stored else 0),
               i.created_at.strftime("%Y-%m-%d %H:%M")]
        if pushed:
            row.append(" ".join(f"{p.repo_id}@{p.tag}" for p in pushes.get(i.ref, [])) or "-")
        rows.append(row)
    cols = ["ref", "kind", "aliases", "digest", "summary", "files", "disk", "created"] + (["hub"] if pushed else [])
    render.table(None, cols, rows)


def _what(i) -> str:
    d = i.details
    if i.kind == "base":
        return f"{d.get('architecture', '')} {d.get('dtype', '')} {_params(d.get('param_count'))}".strip()
    if i.kind == "adapter":
        flags = "".join(f" {f}" for f, on in (("rslora", d.get("use_rslora")), ("dora", d.get("use_dora"))) if on)
        return f"r={d.get('r')} alpha={d.get('lora_alpha')}{flags} on {d.get('base')}"
    r = d.get("recipe", {})
    ads = " + ".join(f"{a['ref']}:{a['weight']:g}" for a in r.get("adapters", []))
    return f"{r.get('method', '')} {r.get('base', {}).get('ref', '')} + {ads}".strip()


def _params(n) -> str:
    if not n:
        return ""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


@click.command()
@click.argument("ref")
@json_option
@with_registry
def show(reg, ref: str, as_json: bool) -> None:
    """Show one version: files, digest, size, config summary, recipe."""
    info = reg.get(ref=ref)
    if as_json:
        render.print_json(info.to_dict())
        return
    pairs = [("ref", info.ref), ("kind", info.kind), ("digest", info.digest), ("path", info.path),
             ("size", render.human_size(info.size_bytes)), ("aliases", ", ".join(info.aliases) or "-"),
             ("created", f"{info.created_at:%Y-%m-%d %H:%M:%S} by {info.created_by}")]
    for k, v in info.details.items():
        if k in ("recipe", "outcome"):
            continue
        pairs.append((k, v))
    render.key_values(f"{info.kind} {info.ref}", pairs)
    recipe = info.details.get("recipe")
    if recipe:
        render.key_values("recipe", [(k, v) for k, v in recipe.items() if k not in ("adapters", "base")]
                          + list(info.details.get("outcome", {}).items()))
        render.table("inputs", ["role", "ref", "weight", "digest"],
                     [["base", recipe["base"]["ref"], "", recipe["base"]["digest"]]]
                     + [["adapter", a["ref"], f"{a['weight']:g}", a["digest"]] for a in recipe.get("adapters", [])])
    if info.files:
        render.table("files", ["path", "size", "sha256"],
                     [[path, render.human_size(f.size), f.sha256[:16]] for path, f in info.files.items()])


@click.command()
@click.argument("ref", required=False)
@click.option("--all", "all_", is_flag=True, help="Verify every version and every blob.")
@json_option
@with_registry
def verify(reg, ref: str | None, all_: bool, as_json: bool) -> None:
    """Re-hash stored files (or referenced folders) and compare with what was recorded."""
    with render.progress("verifying") as advance:
        results = reg.verify(ref=ref, all_versions=all_, progress=advance)
    if as_json:
        render.print_json([r.to_dict() for r in results])
    else:
        for r in results:
            click.echo(f"{'ok ' if r.ok else 'BAD'}  {r.ref}  ({r.checked_files} files)")
            for p in r.problems:
                click.echo(f"     {p}")
    bad = [r for r in results if not r.ok]
    if bad:
        fail(f"{len(bad)} of {len(results)} checked versions failed verification",
             "restore the files, or re-add the version; lorareg gc removes blobs nothing references")


@click.command()
@click.argument("ref", required=False)
@click.option("-n", "--limit", default=50, show_default=True)
@json_option
@with_registry
def log(reg, ref: str | None, limit: int, as_json: bool) -> None:
    """Show events (who did what, when), newest first."""
    events = reg.log(ref=ref, limit=limit)
    if as_json:
        render.print_json([e.to_dict() for e in events])
        return
    render.table(None, ["time", "user", "action", "ref", "details"],
                 [[f"{e.time:%Y-%m-%d %H:%M:%S}", e.user, e.action, e.ref,
                   " ".join(f"{k}={v}" for k, v in sorted(e.args.items()) if v is not None)] for e in events])


@click.group()
def alias() -> None:
    """Move, remove and list aliases (name@prod, name@current)."""


@alias.command("set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version", type=int)
@json_option
@with_registry
def alias_set(reg, name: str, alias_name: str, version: int, as_json: bool) -> None:
    """Point NAME@ALIAS at VERSION."""
    a = reg.set_alias(name=name, alias=alias_name, version=version)
    render.print_json(a.to_dict()) if as_json else click.echo(f"{a.name}@{a.alias} -> {a.version}")


@alias.command("rm")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@with_registry
def alias_rm(reg, name: str, alias_name: str, as_json: bool) -> None:
    """Remove NAME@ALIAS."""
    reg.remove_alias(name=name, alias=alias_name)
    render.print_json({"name": name, "alias": alias_name, "removed": True}) if as_json else click.echo(
        f"removed {name}@{alias_name}")


@alias.command("ls")
@click.argument("name", required=False)
@json_option
@with_registry
def alias_ls(reg, name: str | None, as_json: bool) -> None:
    """List aliases."""
    items = reg.aliases(name=name)
    if as_json:
        render.print_json([a.to_dict() for a in items])
    else:
        render.table(None, ["name", "alias", "version", "since"],
                     [[a.name, a.alias, a.version, f"{a.updated_at:%Y-%m-%d %H:%M}"] for a in items])


@alias.command("history")
@click.argument("name")
@click.option("--alias", "alias_name", help="Only this alias.")
@click.option("--at", "at", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]),
              help="Show what each alias pointed at at this time (UTC).")
@json_option
@with_registry
def alias_history(reg, name: str, alias_name: str | None, at, as_json: bool) -> None:
    """Every move of NAME's aliases, or with --at what was live then."""
    items = reg.alias_history(name=name, alias=alias_name, at=at)
    if as_json:
        render.print_json([a.to_dict() for a in items])
    else:
        render.table(None, ["time", "alias", "version"],
                     [[f"{a.updated_at:%Y-%m-%d %H:%M:%S}", f"{a.name}@{a.alias}", a.version or "(removed)"]
                      for a in items])


COMMANDS = [init, add, ls, show, verify, log, alias]
