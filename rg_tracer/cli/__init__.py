"""The ``rg-tracer`` command: a thin click package over the library, one module per concern.

Every command is registered here, explicitly; the command modules import the library inside
their functions, so ``rg-tracer --help`` starts without torch. User mistakes raise
:class:`rg_tracer.errors.UserError` and leave as one-line messages (exit 1, :func:`user_errors`);
usage errors exit 2.
"""

from __future__ import annotations

import sys

import click

from rg_tracer.cli.analyze import analyze_command, ingest_command
from rg_tracer.cli.common import user_errors
from rg_tracer.cli.eggroll import eggroll_command, fitness
from rg_tracer.cli.export import export_group
from rg_tracer.cli.inputs import data_command, init_model_command
from rg_tracer.cli.merge import merge_command
from rg_tracer.cli.train import train_command

__all__ = ["main", "cli", "user_errors"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rg-tracer")
def cli() -> None:
    """Train small causal LMs with DAPO on GEPA reward vectors, and analyse how each axis moves."""


for _command in (train_command, eggroll_command, init_model_command, data_command, ingest_command,
                 analyze_command, fitness, export_group, merge_command):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="rg-tracer")


if __name__ == "__main__":
    sys.exit(main())
