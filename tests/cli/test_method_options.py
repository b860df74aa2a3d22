"""``merge``'s method options come from the methods' declarations: a method with a new parameter
reaches the CLI, the recipe and rebuild without an edit outside its own file."""

from __future__ import annotations

import click
from click.testing import CliRunner

from lorareg.merge import METHODS, Param
from lorareg.merge import methods as methods_module
from lorareg.merge.methods import MergeMethod
from lorareg.merge.methods.linear import LINEAR


class Scaled(MergeMethod):
    """The linear sum times a factor: a parameter no registered method has."""

    name = "scaled"
    summary = "linear, times a factor"
    params = (Param("factor", float, 1.0, "multiplies the summed delta", low=0.0, high=10.0),)

    def _combine(self, deltas, weights, *, params, generator):
        return LINEAR._combine(deltas, [w * params["factor"] for w in weights], params={}, generator=generator)


def test_every_declared_parameter_is_a_merge_option():
    from lorareg.cli.main import cli

    import click

    # commands load when first asked for (cli/main.py COMMAND_MODULES), not at import
    options = {o.name: o for o in cli.get_command(click.Context(cli), "merge").params}
    for method in METHODS.values():
        for p in method.params:
            opt = options[f"method_param_{p.name}"]
            assert f"--{p.name.replace('_', '-')}" in opt.opts and method.name in opt.help
            if p.choices:
                assert list(opt.type.choices) == [str(c) for c in p.choices]
    assert list(options["method"].type.choices) == list(METHODS)


def test_a_new_method_reaches_the_cli_recipe_and_rebuild(monkeypatch, reg, llama, llama_lora):
    from lorareg.cli.method_options import method_choice, method_param_options, take_method_params

    monkeypatch.setattr(methods_module, "METHODS", {**METHODS, "scaled": Scaled()})

    @click.command()
    @click.option("--method", type=method_choice())
    @method_param_options
    def fake_merge(method, **given):
        click.echo(f"{method} {take_method_params(given)}")

    out = CliRunner().invoke(fake_merge, ["--method", "scaled", "--factor", "2.5"])
    assert out.exit_code == 0 and out.output.strip() == "scaled {'factor': 2.5}"
    help_text = " ".join(CliRunner().invoke(fake_merge, ["--help"]).output.split())
    assert "--factor FLOAT Multiplies the summed delta (scaled; default 1.0)." in help_text

    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    info = reg.merge(base="llama", adapters=["chat"], name="s", method="scaled", params={"factor": 2})
    assert info.details["recipe"]["params"] == {"factor": 2.0}
    assert reg.rebuild(ref=info.ref).ok
    same = reg.merge(base="llama", adapters=["chat:2"], name="lin")
    assert same.digest == info.digest  # 1.0 * 2 == weight 2, through the same linear arithmetic
