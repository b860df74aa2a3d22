"""``merge``'s method options, generated from what the merge methods declare.

A method with a new parameter declares it in its own file (``lorareg.merge.methods``); the
option, its choices and its help appear here without an edit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

_PREFIX = "method_param_"


def _declared() -> dict[str, tuple[Any, list[str]]]:
    """Each parameter name -> (its declaration, the methods that take it)."""
    from lorareg.merge.methods import METHODS

    out: dict[str, tuple[Any, list[str]]] = {}
    for method in METHODS.values():
        for p in method.params:
            out.setdefault(p.name, (p, []))[1].append(method.name)
    return out


def method_choice() -> click.Choice:
    from lorareg.merge.methods import METHODS

    return click.Choice(list(METHODS))


def methods_epilog() -> str:
    from lorareg.merge.methods import METHODS

    lines = ["\b", "Methods:"] + [f"  {m.name:<16} {m.summary}" for m in METHODS.values()]
    return "\n".join(lines)


def method_param_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One option per declared parameter (``--density``, ``--majority-sign-method``, ...)."""
    for name, (p, users) in sorted(_declared().items(), reverse=True):
        kind = click.Choice([str(c) for c in p.choices]) if p.choices else p.type
        default = "" if p.default is None else f"; default {p.default}"
        fn = click.option(f"--{name.replace('_', '-')}", f"{_PREFIX}{name}", type=kind, default=None,
                          help=f"{p.help[0].upper()}{p.help[1:]} ({', '.join(users)}{default}).")(fn)
    return fn


def take_method_params(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the generated options from ``kwargs``; the ones given, as the method's params."""
    given = {}
    for key in [k for k in kwargs if k.startswith(_PREFIX)]:
        value = kwargs.pop(key)
        if value is not None:
            given[key[len(_PREFIX):]] = value
    return given
