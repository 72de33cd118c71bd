"""``rg-tracer ingest`` and ``rg-tracer analyze``: a thin click layer over the library.

``rg_tracer/cli/__init__.py`` registers both. User mistakes
(no logs, a database in use) become one-line ``ClickException`` messages
(exit 1); skipped log lines are reported but do not fail the command.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["ingest_command", "analyze_command"]

# The library is imported inside the commands: registering them must not slow
# down every other rg-tracer command. Equal to correlations.DEFAULT_MAX_LAG (tested).
DEFAULT_MAX_LAG = 25

#: ``auto`` and the names of ``analysis.db.formats.FORMATS`` (equal, tested): not imported here.
FORMAT_CHOICES = ("auto", "rg-tracer", "trl", "verl")
_FORMAT = click.option(
    "--format", "format_", type=click.Choice(FORMAT_CHOICES), default="auto", show_default=True,
    help="Run format: auto detects it per directory (rg-tracer train.jsonl, a TRL GRPOTrainer output_dir, a verl "
         "run); a name reads only runs of that format. See docs/peers.md.")
_RUNS_DIR = click.Path(exists=True, file_okay=False, dir_okay=True, path_type=Path)
_DB = click.Path(dir_okay=False, path_type=Path)
_SHOWN_ERRORS = 10


def _echo_result(result) -> None:
    for note in result.notes:  # files left out, and why
        click.echo(f"note: {note}", err=True)
    for f in result.files:
        if f.new_lines or f.n_errors or f.restarted:
            note = " (log was rewritten: read again from the start)" if f.restarted else ""
            click.echo(f"{f.run_id}: {f.new_lines} new line(s), {f.records} record(s), "
                       f"{f.n_errors} skipped{note}", err=True)
        if f.n_errors and f.records == 0 and f.new_lines:
            click.echo(f"  {f.path}: not an rg-tracer JSONL log; first problem at line "
                       f"{f.errors[0].line}: {f.errors[0].field}: {f.errors[0].message}", err=True)
            continue
        for bad in f.errors[:_SHOWN_ERRORS]:
            click.echo(f"  {f.path}:{bad.line}: {bad.field}: {bad.message}", err=True)
        if f.n_errors > _SHOWN_ERRORS:
            click.echo(f"  ... and {f.n_errors - _SHOWN_ERRORS} more (SELECT * FROM ingest_errors)", err=True)
        for note in f.notes[:_SHOWN_ERRORS]:  # read, with a default for a missing optional field
            many = f" ({note.count} lines from here)" if note.count > 1 else ""
            click.echo(f"  note: {f.path}:{note.line}: {note.field}: {note.message}{many}", err=True)
        if len(f.notes) > _SHOWN_ERRORS:
            click.echo(f"  ... and {len(f.notes) - _SHOWN_ERRORS} more notes (SELECT * FROM ingest_notes)", err=True)


@click.command("ingest")
@click.argument("runs_dir", type=_RUNS_DIR)
@click.option("--db", "db_path", type=_DB, default=None,
              help="DuckDB file to write [default: RUNS_DIR/rg_tracer.duckdb].")
@_FORMAT
def ingest_command(runs_dir: Path, db_path: Path | None, format_: str) -> None:
    """Load every run log under RUNS_DIR into a DuckDB file.

    Finds every *.jsonl below RUNS_DIR (a run's id is its directory relative to
    RUNS_DIR) and loads only the lines appended since the last call. Unreadable
    lines are skipped and listed as FILE:LINE: FIELD: PROBLEM. Output directories
    of TRL's GRPOTrainer and of verl are converted first (docs/peers.md).

    \b
    Example:
        rg-tracer ingest runs/
        python -c "from analysis import open_runs; print(open_runs('runs').runs())"
    """
    from analysis.db import IngestError, ingest

    try:
        result = ingest(runs_dir, db_path, format=format_)
    except IngestError as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_result(result)
    click.echo(str(result.db_path))


@click.command("analyze")
@click.argument("runs_dir", type=_RUNS_DIR)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/all"),
              show_default=True, help="Directory to write the HTML report into.")
@click.option("--db", "db_path", type=_DB, default=None,
              help="DuckDB file to use [default: RUNS_DIR/rg_tracer.duckdb].")
@click.option("--max-lag", type=click.IntRange(0, 1000), default=DEFAULT_MAX_LAG, show_default=True,
              help="Largest lead/lag, in steps, tried between an RL metric and a reward axis.")
@_FORMAT
def analyze_command(runs_dir: Path, out_dir: Path, db_path: Path | None, max_lag: int, format_: str) -> None:
    """Report how each reward axis of every run evolved, and what moved first.

    Ingests RUNS_DIR (as `rg-tracer ingest` does), then writes OUT/index.html
    (all runs) and OUT/<run_id>/index.html, which opens with warnings (a run
    that memorises, games a reward, collapses, has a dead axis or no end token)
    and what happened (changes tested against each axis's own noise, leads and
    same-step couplings between RL metrics and axes, grokking calls, each with
    its uncertainty), then curves, correlations, lead/lag, per-task and eval
    plots; plus OUT/<run_id>/summary.json. Prints the path of OUT/index.html.
    RUNS_DIR may hold TRL GRPOTrainer output directories and verl runs too.
    How often the findings are wrong on data with known truth: docs/analysis.md.

    \b
    Example:
        rg-tracer analyze runs/ --out reports/all
        xdg-open reports/all/index.html
    """
    from analysis.analyze import analyze_runs
    from analysis.db import IngestError, ingest

    try:
        result = ingest(runs_dir, db_path, format=format_)
        _echo_result(result)
        index = analyze_runs(runs_dir, out_dir, db_path, max_lag=max_lag, ingested=result)  # ingests once
    except IngestError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(index))

