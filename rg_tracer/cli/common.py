"""What every command shares: one-line user errors, and click options built from a config class.

``options_from(TrainConfig)`` gives one ``--flag`` per field with the field's help text, so
help is written once (in the config); :class:`SectionedCommand` prints them under one
heading per concern, the field's ``section``, in the order of the class's ``SECTIONS``.
"""

from __future__ import annotations

import dataclasses
import functools
import typing

import click

from rg_tracer.errors import UserError
from rg_tracer.options import INPUTS, base_type, config_from_file

__all__ = ["user_errors", "options_from", "config_option", "config_from_cli", "SectionedCommand",
           "EXIT_INTERRUPTED", "RUN_EXIT_STATUS", "finish_run"]

_TYPES = {int: int, float: float, str: str}

#: Exit status of a run stopped by Ctrl-C: 128 + SIGINT, as a shell reports a process killed by it.
EXIT_INTERRUPTED = 130
#: The ``--help`` epilogue of the commands that run a search.
RUN_EXIT_STATUS = ("Exit status: 0 the run finished; 1 an error, in one line saying the fix (an option or input "
                   f"refused at start writes nothing); {EXIT_INTERRUPTED} stopped by Ctrl-C (the log's end record "
                   "says status 'interrupted').")


def user_errors(func):
    """Turn :class:`UserError` into a one-line click error (exit 1) instead of a traceback, and
    an aborting Ctrl-C into exit status :data:`EXIT_INTERRUPTED`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("aborted by Ctrl-C", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def finish_run(search, where: str, done: int, planned: int) -> None:
    """What a search command prints at the end (rank 0 only under torchrun): the last eval in one
    line, then ``where`` (the log, ...); a run stopped by Ctrl-C before its last step exits with
    :data:`EXIT_INTERRUPTED`, so scripts can tell."""
    from rg_tracer.runtime.evaluation import eval_summary

    if search.dist.is_main:
        summary = eval_summary(search.last_eval)
        if summary:
            click.echo(summary)
        click.echo(where)
    if done < planned:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)


class _FieldOption(click.Option):
    """A click option that knows the ``--help`` section it belongs to."""

    def __init__(self, *args, section: str = INPUTS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


class SectionedCommand(click.Command):
    """``--help`` lists the options under one heading per section, in the order they were declared."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            row = param.get_help_record(ctx)
            if row:
                sections.setdefault(getattr(param, "section", "Other"), []).append(row)
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


def options_from(config_cls):
    """Decorate a click command with one ``--option`` per field of ``config_cls``, by section."""
    hints = typing.get_type_hints(config_cls)
    order = {name: i for i, name in enumerate(config_cls.SECTIONS)}
    fields = sorted(dataclasses.fields(config_cls), key=lambda f: order[f.metadata["section"]])  # stable

    def decorate(command):
        for f in reversed(fields):
            flag = "--" + f.name.replace("_", "-")
            common = dict(cls=_FieldOption, section=f.metadata["section"], help=f.metadata["help"])
            base = base_type(hints[f.name])
            if base is bool:
                decl = f"{flag}/--no-{flag[2:]}" if f.default else flag
                command = click.option(decl, f.name, is_flag=True, default=f.default, **common)(command)
            else:
                command = click.option(flag, f.name, type=_TYPES[base], default=f.default,
                                       show_default=f.default is not None, metavar=f.metadata.get("metavar"),
                                       **common)(command)
        return command

    return decorate


def config_option(command):
    """``--config FILE``: options from a YAML file, under the flags given on the command line."""
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                        cls=_FieldOption, section=INPUTS,
                        help="YAML file of options (keys are option names with '_'); flags given here override it.")(command)


def config_from_cli(cls, ctx: click.Context, config_file: str | None, options: dict):
    """The command's config: ``--config`` file values, overridden by flags given explicitly."""
    if not config_file:
        return cls(**options)
    given = {k: v for k, v in options.items()
             if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    return config_from_file(cls, config_file, **given)
