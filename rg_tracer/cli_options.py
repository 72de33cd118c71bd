"""Click options generated from a config dataclass, so help text is written once."""

from __future__ import annotations

import dataclasses
import typing

import click

__all__ = ["options_from"]

_TYPES = {int: int, float: float, str: str}


def _base_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def options_from(config_cls):
    """Decorate a click command with one ``--option`` per field of ``config_cls``."""
    hints = typing.get_type_hints(config_cls)

    def decorate(command):
        for f in reversed(dataclasses.fields(config_cls)):
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            base = _base_type(hints[f.name])
            if base is bool:
                decl = f"{flag}/--no-{flag[2:]}" if f.default else flag
                command = click.option(decl, f.name, is_flag=True, default=f.default, help=help_text)(command)
            else:
                command = click.option(
                    flag, f.name, type=_TYPES[base], default=f.default,
                    show_default=f.default is not None, help=help_text,
                )(command)
        return command

    return decorate
