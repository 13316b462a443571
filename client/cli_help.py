"""How the ``bregkd`` help screens and argument parsing differ from typer's defaults.

- Help shows no type labels (``<bool>``, ``<list[str]>``): a flag shows nothing, a value option
  its metavar (``N``, ``ID``, ``KEY=VALUE``) or a plain word (``TEXT``, ``INTEGER``, ``PATH``).
- ``--json`` is accepted anywhere on the line, before or after the sub-command.

Typer builds its click commands from classes given as ``cls``; :class:`Typer` makes these the
default for every command and group it creates.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

#: options of the root command that may also be given after the sub-command
ANYWHERE_FLAGS = ("--json",)

_PLAIN_TYPES = {int: "INTEGER", float: "NUMBER", str: "TEXT", Path: "PATH"}


def _plain_label(param: Any) -> None:
    """Make the help's type column show a metavar, a plain word or nothing, never ``<type>``."""
    if not hasattr(param, "display_type_rich"):  # another typer version: leave its labels alone
        return
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        label = None
    elif isinstance(param, typer.core.TyperArgument):
        label = None  # the argument's name (its metavar) is already in the first column
    else:
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        label = param.metavar or _PLAIN_TYPES.get(annotation, "TEXT")
        if label and getattr(param, "multiple", False):
            label += " (repeatable)"
    param.display_type_rich = lambda ctx=None, _label=label: _label


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for p in params:
            _plain_label(p)
        return params


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for p in params:
            _plain_label(p)
        return params

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # the root group sees the whole line: move --json from wherever it is to the front
        if ctx.parent is None:
            end = args.index("--") if "--" in args else len(args)
            moved = [a for a in args[:end] if a in ANYWHERE_FLAGS]
            if moved:
                args = [*dict.fromkeys(moved), *(a for a in args[:end] if a not in ANYWHERE_FLAGS), *args[end:]]
        return super().parse_args(ctx, args)


class Typer(typer.Typer):
    """typer.Typer whose commands and sub-groups use :class:`Command` and :class:`Group`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        if kwargs.get("cls") is None:
            kwargs["cls"] = Command
        return super().command(*args, **kwargs)
