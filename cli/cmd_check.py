"""check (a merged version against its unmerged recipe) and config (registry-wide settings)."""

from __future__ import annotations

import sys

import click

from lorareg.cli import render
from lorareg.cli.common import complete_ref, json_option, with_registry
from lorareg.cli.errors import HelpGroup
from lorareg.merge.behaviour import FACTOR  # a constant: importing it loads no torch

RULE_HELP = f"""\
    The pass rule: the merged model's max |logit difference| from the float32
    unmerged model must be at most {FACTOR:g}x the difference rounding alone makes
    (the unmerged model run in the merged dtype; float64 for a float32 merge),
    and wherever rounding alone cannot change the top token, the merged model
    must pick the unmerged model's top token too.  The factor is calibrated:
    exact merges in float32, bfloat16 and float16 stay within 1.7x; a module
    left out, a wrong scale or an altered weight fails once it moves the
    outputs more than {FACTOR:g}x what rounding does.  Encoders compare the last
    hidden state."""


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _num(value) -> str:
    return "-" if value is None else (value if isinstance(value, str) else f"{value:.3g}")


def _inputs_text(r) -> str:
    what = (f"{r.samples} prompts (sha256 {r.prompts_sha256[:12]}{', chat template' if r.chat else ''})"
            if r.prompts_sha256 else f"{r.samples} token sequences drawn from the vocabulary, seed {r.seed}")
    return f"{what}; {r.positions} positions" + (f"; {r.max_new_tokens} generated tokens each"
                                                 if r.max_new_tokens else "")


def render_check(r) -> None:
    reference = {"peft-unmerged": "the base with its adapters applied through PEFT, unmerged",
                 "float64-deltas": "the base plus the recipe's combined deltas in float64 (no unmerged form)"}
    render.key_values(f"check {r.ref}: {'passed' if r.passed else 'FAILED'}", [
        ("reference", f"{r.reference}: {reference.get(r.reference, r.reference)}, run in float32"),
        ("compared", f"{r.compared} in {r.dtype} ({r.outputs})"),
        ("inputs", _inputs_text(r)),
        ("rule", f"max |difference| <= {r.factor:g} x rounding alone = {_num(r.tolerance)}"),
    ])
    rounding = r.rounding or {}
    decisive = r.top1_decisive or {}
    rows = [["max |difference|", _num(r.max_abs_diff), _num(rounding.get("max_abs_diff"))],
            ["mean |difference|", _num(r.mean_abs_diff), _num(rounding.get("mean_abs_diff"))]]
    if r.top1_agreement is not None:
        rows.append(["top-1 agreement", _pct(r.top1_agreement), _pct(rounding.get("top1_agreement"))])
        rows.append([f"  where rounding cannot flip it ({decisive.get('positions')})", _pct(decisive.get("merged")),
                     _pct(decisive.get("rounding"))])
    if r.generation_agreement is not None:
        rows.append(["greedy tokens equal", _pct(r.generation_agreement), _pct(rounding.get("generation_agreement"))])
    if r.adapter_error is not None:
        rows.append(["combined delta error (relative)", _num(r.adapter_error), "-"])
    render.table(None, [render.Column("measure", keep=True), render.Column("merged", justify="right"),
                        render.Column(f"rounding alone ({rounding.get('baseline', '')})", justify="right")], rows)
    for failure in r.failures:
        click.echo(f"  fails: {failure}")


@click.command(epilog="\b\n" + RULE_HELP)
@click.argument("ref", shell_complete=complete_ref("merge"))
@click.option("--prompts", type=click.Path(dir_okay=False), metavar="FILE",
              help="Run these prompts, one per line (default: token sequences drawn from the vocabulary).")
@click.option("--chat", is_flag=True, help="Apply the merged model's chat template to each prompt.")
@click.option("--samples", type=int, metavar="N",
              help="How many sequences to draw (default 8), or how many prompts to run from the top (default all).")
@click.option("--max-new-tokens", type=int, metavar="N", help="Also generate N tokens greedily and compare them.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the drawn sequences (recorded).")
@click.option("--device", default="cpu", show_default=True, help="Where the models run: cpu, cuda, cuda:1, ...")
@json_option
@with_registry
def check(reg, ref, prompts, chat, samples, max_new_tokens, seed, device, as_json) -> None:
    """Check that merged REF behaves like the base + adapters its recipe describes.

    Runs the unmerged model (PEFT, every adapter at its recipe weight, all active; for ties,
    dare and magnitude_prune the base plus the combined deltas in float64) in float32, the
    same in the merged dtype (how far rounding alone moves it), and the merged model, on the
    same inputs; records the result with the version.  Exit 0 when it passes, 1 when not.

    \b
    Examples:
      lorareg check assistant@3
      lorareg check assistant@3 --prompts eval.txt --chat --max-new-tokens 32
      lorareg check assistant --json | jq .passed
    """
    with render.step_progress("checking") as update:  # a recipe-only version's rebuild, then the 3 runs
        res = reg.check(ref=ref, prompts=prompts, chat=chat, samples=samples, max_new_tokens=max_new_tokens,
                        seed=seed, device=device, progress=update)
    if as_json:
        render.print_json(res.to_dict())
    else:
        render_check(res)
    if not res.passed:
        # the JSON above already carries the numbers; the reason goes to stderr either way
        click.echo(f"Error: {res.ref} failed its check: {res.failures[0] if res.failures else 'see above'}",
                   err=True)
        if res.compared.startswith("the combined svd"):
            hint = (f"--as-adapter svd is lossy (relative error of the combined deltas {_num(res.adapter_error)}): "
                    "merge again with a higher --rank, or with --as-adapter cat (exact)")
        else:
            hint = f"its weights do not match its recipe: rebuild it (lorareg rebuild {res.ref}) and check again"
        click.echo(f"Hint: {hint}", err=True)
        sys.exit(1)


@click.group(cls=HelpGroup)
def config() -> None:
    """Registry-wide settings, stored in the database (a team sharing it shares them).

    \b
    Settings:
      require-check  true: push and alias set refuse a merged version whose latest check
                     did not pass (--no-require-check overrides it for one command)

    \b
    Examples:
      lorareg config set require-check true
      lorareg config get
    """


@config.command("get")
@click.argument("key", required=False)
@json_option
@with_registry
def config_get(reg, key, as_json) -> None:
    """Print one setting's value, or every setting.

    \b
    Examples:
      lorareg config get require-check
      lorareg config get --json
    """
    values = {key: reg.get_setting(key=key)} if key else reg.settings()
    if as_json:
        render.print_json(values)
    elif key:
        click.echo(values[key])
    else:
        render.key_values("settings", sorted(values.items()))


@config.command("set")
@click.argument("key")
@click.argument("value")
@json_option
@with_registry
def config_set(reg, key, value, as_json) -> None:
    """Set a registry-wide setting (recorded in the event log).

    \b
    Examples:
      lorareg config set require-check true
      lorareg config set require-check false
    """
    stored = reg.set_setting(key=key, value=value)
    render.print_json({key: stored}) if as_json else click.echo(f"{key} = {stored}")


COMMANDS = [check, config]
