"""``rg-tracer train``: DAPO on the scorer's reward vectors; options are :class:`TrainConfig` fields."""

from __future__ import annotations

import click

from rg_tracer.cli.common import (
    RUN_EXIT_STATUS, SectionedCommand, config_from_cli, config_option, finish_run, options_from, user_errors,
)
from rg_tracer.dapo.config import TrainConfig
from rg_tracer.models import quiet_transformers

__all__ = ["train_command"]


@click.command("train", cls=SectionedCommand, epilog=RUN_EXIT_STATUS + " An interrupted run continues with --resume.")
@config_option
@options_from(TrainConfig)
@click.pass_context
@user_errors
def train_command(ctx: click.Context, config_file: str | None, **options) -> None:
    """Train a causal LM with DAPO on scorer reward vectors; log to OUTPUT_DIR/train.jsonl.

    \b
    Example:
        rg-tracer init-model runs/tiny --arch qwen2
        rg-tracer train --model runs/tiny --dataset datasets/toy_math/addition_small.jsonl \\
            --output-dir runs/dapo_hybrid --batch-size 8 --group-size 8 --learning-rate 1e-3 \\
            --max-steps 200 --eval-every 50
    """
    config = config_from_cli(TrainConfig, ctx, config_file, options)
    quiet_transformers()
    from rg_tracer.dapo.trainer import train

    trainer = train(config)
    finish_run(trainer, f"log: {trainer.run.log_path} (step {trainer.step})", trainer.step, config.max_steps)
