"""Click commands ``rg-tracer eggroll`` and ``rg-tracer fitness export``: a thin layer.

Options map onto :class:`~rg_tracer.eggroll.config.EggrollConfig` fields and
:func:`~rg_tracer.eggroll.export.export_fitness` arguments; user mistakes raise
``UserError`` and leave as one-line messages with exit code 1 (``user_errors``).
"""

from __future__ import annotations

import click

from rg_tracer.cli.common import (
    RUN_EXIT_STATUS, SectionedCommand, config_from_cli, config_option, finish_run, options_from, user_errors,
)
from rg_tracer.eggroll.config import EggrollConfig
from rg_tracer.eggroll.shaping import SHAPINGS
from rg_tracer.models import quiet_transformers

__all__ = ["eggroll_command", "fitness", "export_command"]


#: Units of ``fitness export --by`` (``rg_tracer.eggroll.export.BY``; here so the CLI starts without polars).
UNITS = ("step", "task", "prompt")


@click.command("eggroll", cls=SectionedCommand, epilog=RUN_EXIT_STATUS)
@config_option
@options_from(EggrollConfig)
@click.pass_context
@user_errors
def eggroll_command(ctx: click.Context, config_file: str | None, **options) -> None:
    """Evolve a causal LM with EGGROLL (low-rank evolution strategies) on the scorer's mixed reward.

    Every generation, --population members (rank --rank perturbations of every
    Linear/Conv1D weight, scale --sigma) answer --prompts prompts in batched forwards;
    each member's fitness is its mean mixed reward (--reward-mixer), shaped by
    --shaping, and the weights move by --lr times the fitness-weighted mean
    perturbation. Logs OUTPUT_DIR/train.jsonl in the rg-tracer/2 schema, so
    `rg-tracer analyze` reports the run like an RL run.

    \b
    Example:
        rg-tracer init-model runs/tiny --arch qwen2
        rg-tracer eggroll --model runs/tiny --dataset datasets/toy_math/addition_tiny.jsonl \\
            --reward-mixer configs/demo/reward_mixer.yaml --output-dir runs/es1 \\
            --population 32 --rank 1 --sigma 0.05 --lr 10 --generations 200 --max-new-tokens 2
        rg-tracer eggroll --config configs/eggroll/demo.yaml --model runs/tiny
    """
    config = config_from_cli(EggrollConfig, ctx, config_file, options)
    quiet_transformers()
    from rg_tracer.eggroll.search import search

    searcher = search(config)
    finish_run(searcher, f"log: {searcher.run.log_path} (generation {searcher.generation}); "
               f"weights: {searcher.run.run_dir / 'model'}", searcher.generation, config.generations)


@click.group("fitness")
def fitness() -> None:
    """Fitness signals of logged runs, for evolution strategies and other searches.

    \b
    Example:
        rg-tracer fitness export runs/ --out fitness.parquet --shaping centered_rank
    """


@fitness.command("export")
@click.argument("runs_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output file: .parquet, or .csv for CSV.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Reward-mixer YAML/JSON used for every run (default: each run's logged reward_weights).")
@click.option("--shaping", type=click.Choice(list(SHAPINGS)), default="none", show_default=True,
              help="Shaping of the scalar fitness, within each step's units (column 'fitness'; 'fitness_raw' is unshaped).")
@click.option("--by", "by", type=click.Choice(UNITS), default="step", show_default=True,
              help="Unit of a row: run × step (× ES member), plus task or prompt.")
@user_errors
def export_command(runs_dir: str, out: str, weights: str | None, shaping: str, by: str) -> None:
    """Write one scalar fitness per unit of every run under RUNS_DIR, with its raw reward axes.

    Each row carries the per-axis means, the mixed scalar (fitness_raw), the shaped
    fitness, the weights and shaping that produced it (docs/eggroll.md lists the
    columns). ES runs have one row per population member.

    \b
    Example:
        rg-tracer fitness export runs/ --out fitness.parquet
        rg-tracer fitness export runs/ --out fitness.csv --by prompt --shaping zscore \\
            --weights configs/reward_mixer.yaml
    """
    from rg_tracer.eggroll.export import export_fitness

    table = export_fitness(runs_dir, out, weights=weights, shaping=shaping, by=by)
    runs = table["run_id"].n_unique()
    click.echo(f"{table.height} rows from {runs} run{'s' if runs != 1 else ''} written to {out}")
