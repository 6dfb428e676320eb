"""How the `jaxseg` help pages show switches and arguments.

typer 0.2x prints a value type after every option, switches included (``--quiet -q <bool>``,
``--help <bool>``), although a switch takes no value; and it writes a required argument as
``{path}`` in the usage line. :class:`App` is a ``typer.Typer`` whose commands and groups give
every switch an empty metavar (nothing is printed after it) and write the usage line the classic
way: ``jaxseg predict [OPTIONS] PATH`` (``[PATH]`` when optional). Only public click hooks are
used (``get_params``, ``collect_usage_pieces``), so older typer releases render the same.
"""
from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


def _switches_show_no_value(params: list[Any]) -> list[Any]:
    """Switches (``--quiet``, ``--figures/--no-figures``, ``--help``) get the metavar ``""``."""
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose help shows switches as switches and arguments as ``NAME``."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _switches_show_no_value(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = param.metavar or param.name.upper()
            if param.nargs != 1:
                name += "..."
            pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(TyperGroup):
    """A command group (``jaxseg``, ``jaxseg data``) whose help shows switches as switches."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _switches_show_no_value(super().get_params(ctx))


class App(typer.Typer):
    """``typer.Typer`` whose commands (``@app.command()``) and groups render as above."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        super().__init__(**kwargs)

    def command(self, *args: Any, cls: type | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or Command, **kwargs)
