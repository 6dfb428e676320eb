"""How the `jaxseg` help pages show switches and arguments.

typer 0.29 prints a value type after every option, switches included (``--quiet -q <bool>``,
``--help <bool>``), although a switch takes no value; it writes a required argument as
``{path}`` in the usage line, and a repeatable option as ``<list[Path]>``. :class:`App` is a
``typer.Typer`` whose commands and groups give every switch an empty metavar (nothing is printed
after it) and a repeatable option the name of one value (``--checkpoint PATH``), and write the
usage line the classic way: ``jaxseg predict [OPTIONS] PATH`` (``[PATH]`` when optional).
A variadic argument shows one value's type (``<path>...``). click's public hooks are used
(``get_params``, ``collect_usage_pieces``), and for that one case typer's
``display_type_rich`` is replaced on the parameter; pyproject.toml
bounds typer to the tested minor series, and tests/test_cli_conventions.py renders every
command's help.
"""
from __future__ import annotations

import typing
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


def _one_value(param: Any) -> str:
    """The name of one value of a repeatable option: ``List[Path]`` -> ``PATH``."""
    descriptor = getattr(param, "type_descriptor", None)  # typer 0.2x: the annotation
    if descriptor is not None:
        element = (typing.get_args(descriptor.annotation) or (descriptor.annotation,))[0]
        name = getattr(element, "__name__", "value")
    else:  # click's parameter type
        name = getattr(getattr(param, "type", None), "name", "value")
    return {"str": "TEXT"}.get(name, name.upper())


def _switches_show_no_value(params: list[Any]) -> list[Any]:
    """Switches (``--quiet``, ``--figures/--no-figures``, ``--help``) get the metavar ``""``;
    repeatable options without a metavar the name of one value."""
    for param in params:
        if param.param_type_name == "argument" and param.nargs != 1:
            # typer renders a variadic argument's type as <list[Path]>: show one value's type.
            shown = f"<{_one_value(param).lower()}>..."
            param.display_type_rich = lambda ctx, shown=shown: shown
            continue
        if getattr(param, "metavar", None) is not None or param.param_type_name != "option":
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif getattr(param, "multiple", False):
            param.metavar = _one_value(param)
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
