"""``rg-tracer export``: logged runs in other tools' formats (``export tensorboard``)."""

from __future__ import annotations

from pathlib import Path

import click

from rg_tracer.cli.common import user_errors
from rg_tracer.errors import UserError

__all__ = ["export_group"]


@click.group("export")
def export_group() -> None:
    """Export the runs under a directory to other tools.

    \b
    Example:
        rg-tracer export tensorboard runs/ --out tensorboard/
        tensorboard --logdir tensorboard/
    """


@export_group.command("tensorboard")
@click.argument("runs_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for one event directory per run, OUT/<run_id>/. An existing OUT is kept: only the "
                   "event files of the runs written now are replaced; other runs and files stay.")
@user_errors
def tensorboard_command(runs_dir: Path, out_dir: Path) -> None:
    """Write every run under RUNS_DIR as TensorBoard scalars in OUT/<run_id>/.

    Ingests RUNS_DIR (as `rg-tracer ingest` does) and writes, each at its step:
    reward/<axis>, tag/<name> and verifier/<name> (means over the step's samples),
    rl/<metric> (RL metrics) and eval/<split>/<axis> (eval records). Writing again
    replaces the event files (events.out.tfevents.*) in OUT/<run_id>/ of each run
    written, and nothing else under OUT. Tag names: docs/analysis.md, "TensorBoard".

    \b
    Example:
        rg-tracer export tensorboard runs/ --out tensorboard/
        tensorboard --logdir tensorboard/
    """
    from analysis import IngestError, open_runs
    from analysis.tensorboard_export import scalar_series, write_events

    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a directory; pass the directory your runs write to")
    if next(runs_dir.rglob("*.jsonl"), None) is None:  # checked first, so an empty directory gets no database
        raise UserError(f"no run logs (*.jsonl) under {runs_dir}; point RUNS_DIR at the directory your runs "
                        "write to (each run writes <run_dir>/train.jsonl)")
    try:
        with open_runs(runs_dir) as runs:
            run_table = runs.runs()
            series = scalar_series(runs.step_stats(), runs.metrics(), runs.evals())
    except IngestError as exc:
        raise UserError(str(exc)) from None
    if run_table.is_empty():
        raise UserError(f"no runs under {runs_dir}: its *.jsonl files are not rg-tracer run logs "
                        "(each run writes <run_dir>/train.jsonl)")
    run_ids = run_table["run_id"].to_list()
    starts = dict(zip(run_ids, run_table["started_at"].to_list()))
    written = write_events(series, out_dir, run_ids, wall_times=starts)
    if not written:
        raise UserError(f"the runs under {runs_dir} logged no step or eval yet; export after at least one step")
    for run in written:
        click.echo(f"{run.run_id}: {run.scalars} scalars, {len(run.tags)} tags -> {run.path}")
    left_out = [r for r in run_ids if r not in {w.run_id for w in written}]
    if left_out:
        click.echo(f"note: left out (no step or eval logged yet): {', '.join(left_out)}", err=True)
    click.echo(f"{len(written)} run{'s' if len(written) != 1 else ''} written to {out_dir}; "
               f"view with: tensorboard --logdir {out_dir}")
