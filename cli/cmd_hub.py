"""push: versioned merged models (or adapters) to the Hugging Face Hub."""

from __future__ import annotations

import click

from lorareg.cli import render
from lorareg.cli.common import complete_ref, json_option, with_registry


@click.command()
@click.argument("ref", shell_complete=complete_ref())
@click.option("--repo", required=True, help="Hub repo id, ORG/NAME (created if missing).")
@click.option("--tag", help="Tag for the commit (default v<version>).")
@click.option("--branch", help="Branch to commit to (default main).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--adapter-only", is_flag=True, help="Push a PEFT adapter (library_name: peft).")
@click.option("--endpoint", envvar="HF_ENDPOINT", help="Hub endpoint for self-hosted or mirror Hubs.")
@click.option("--require-check/--no-require-check", "require_check", default=None,
              help="Refuse a merged version whose latest `lorareg check` did not pass "
                   "(default: the registry's require-check setting).")
@json_option
@with_registry
def push(reg, ref, repo, tag, branch, private, adapter_only, endpoint, require_check, as_json) -> None:
    """Upload REF with its model card in one commit, tag it, and record where it went.

    Pushing the same version again is a no-op.  The token comes from HF_TOKEN or
    `huggingface-cli login`.

    \b
    Examples:
      lorareg push assistant@3 --repo acme/assistant
      lorareg push assistant@3 --repo acme/assistant --require-check   # only if its latest check passed
      lorareg push chat@2 --repo acme/chat-lora --adapter-only --private
    """
    res = reg.push(ref=ref, repo=repo, tag=tag, branch=branch, private=private, adapter_only=adapter_only,
                   endpoint=endpoint, require_check=require_check)
    if as_json:
        render.print_json(res.to_dict())
    elif res.noop:
        click.echo(f"{res.ref} is already on {res.repo_id} as {res.tag} ({res.commit_sha[:12]}): nothing to push")
    else:
        click.echo(f"pushed {res.ref} to {res.repo_id}@{res.tag} ({res.commit_sha[:12]}): "
                   f"{len(res.uploaded)} files uploaded, {len(res.reused)} already there")


COMMANDS = [push]
