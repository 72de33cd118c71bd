"""Click options generated from a config dataclass, so help text is written once."""

from __future__ import annotations

import dataclasses
import typing

import click

__all__ = ["options_from", "config_from_file", "config_from_cli"]

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


def config_from_file(cls, path: str, **overrides):
    """``cls`` built from a YAML file (field names as keys), with ``overrides`` on top."""
    import yaml

    from rg_tracer.errors import UserError

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option -> value")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise UserError(f"--config {path}: unknown option {key!r}; options are the long flags with '_' for '-'")
    try:
        return cls(**{**data, **overrides})
    except TypeError as exc:
        raise UserError(f"--config {path}: {exc}") from None


def config_from_cli(cls, ctx: click.Context, config_file: str | None, options: dict):
    """The command's config: ``--config`` file values, overridden by flags given explicitly."""
    if not config_file:
        return cls(**options)
    given = {k: v for k, v in options.items()
             if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    return config_from_file(cls, config_file, **given)
