"""Read an rg-tracer database back as polars DataFrames (notebooks start here).

    >>> from analysis import open_runs
    >>> runs = open_runs("runs/")          # ingests new lines, then opens read-only
    >>> runs.fitness().filter(pl.col("axis") == "correctness")
    >>> runs.sql("SELECT metric, avg(value) FROM rl_metrics GROUP BY ALL")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from analysis.db import DEFAULT_DB, IngestError, connect, ingest
from analysis.db._tables import DERIVED_TABLES
from analysis.fitness import DEFAULT_SPAN, DEFAULT_WINDOW, fitness_signals

__all__ = ["Runs", "open_runs"]


class Runs:
    """One rg-tracer DuckDB file; every method returns a polars DataFrame."""

    def __init__(self, db_path: str | Path, read_only: bool = True) -> None:
        self.db_path = Path(db_path)
        self._con = connect(self.db_path, read_only=read_only)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Runs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runs({str(self.db_path)!r}, runs={self.run_ids()})"

    def sql(self, query: str, params: Sequence | dict | None = None) -> pl.DataFrame:
        """Run any SQL (bind values with ``$1``/``?`` and ``params``)."""
        return self._con.sql(query, params=params or None).pl()

    @staticmethod
    def _where(run_id: str | None = None, kind: str | None = None, steps: tuple[int, int] | None = None):
        """WHERE clause with ``?`` placeholders and its parameters."""
        parts, params = [], []
        for clause, value in (("run_id = ?", run_id), ("kind = ?", kind)):
            if value is not None:
                parts.append(clause)
                params.append(value)
        if steps is not None:
            parts.append("step BETWEEN ? AND ?")
            params += [int(steps[0]), int(steps[1])]
        return ("WHERE " + " AND ".join(parts)) if parts else "", params

    def run_ids(self) -> list[str]:
        return [r[0] for r in self._con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]

    def runs(self) -> pl.DataFrame:
        return self.sql("SELECT * FROM runs ORDER BY run_id")

    def metrics(self, run_id: str | None = None) -> pl.DataFrame:
        """``rl_metrics``: run_id, step, metric, value (long)."""
        where, params = self._where(run_id)
        return self.sql(f"SELECT run_id, step, metric, value FROM rl_metrics {where} ORDER BY ALL", params)

    def samples(self, run_id: str | None = None, steps: tuple[int, int] | None = None) -> pl.DataFrame:
        """``samples`` rows, optionally for steps ``lo..hi`` inclusive."""
        where, params = self._where(run_id, steps=steps)
        return self.sql(f"SELECT * FROM samples {where} ORDER BY run_id, step, sample_idx", params)

    def axes(self, run_id: str | None = None, kind: str | None = None) -> pl.DataFrame:
        """``sample_axes``: one row per sample and axis value."""
        where, params = self._where(run_id, kind)
        return self.sql(f"SELECT * FROM sample_axes {where} ORDER BY run_id, step, sample_idx, kind, axis", params)

    def evals(self, run_id: str | None = None) -> pl.DataFrame:
        where, params = self._where(run_id)
        return self.sql(f"SELECT * FROM evals {where} ORDER BY run_id, step, split, axis", params)

    def step_stats(self, run_id: str | None = None, by_task: bool = False) -> pl.DataFrame:
        """n, mean, std per run × step (× task) × kind × axis, aggregated in SQL.

        Same numbers as :func:`analysis.fitness.step_stats` on :meth:`axes`,
        without moving every sample into Python.
        """
        where, params = self._where(run_id)
        task = "task_id, " if by_task else ""
        return self.sql(
            f"""SELECT run_id, {task}kind, axis, step, count(*) AS n, avg(value) AS mean,
                       stddev_samp(value) AS std
                FROM sample_axes {where} GROUP BY ALL ORDER BY ALL""",
            params,
        )

    def fitness(
        self, run_id: str | None = None, by_task: bool = False, span: int = DEFAULT_SPAN, window: int = DEFAULT_WINDOW
    ) -> pl.DataFrame:
        """Per-step fitness signals (see :func:`analysis.fitness.fitness_signals`)."""
        by = ("run_id", "task_id", "kind", "axis") if by_task else ("run_id", "kind", "axis")
        return fitness_signals(self.step_stats(run_id, by_task), by=by, span=span, window=window)

    def completions_at(self, run_id: str, kind: str, axis: str, steps: Sequence[int]) -> pl.DataFrame:
        """Samples of ``steps`` with their value on one axis (report drill-down)."""
        return self.sql(
            """SELECT s.step, s.sample_idx, s.task_id, a.value, s.completion
               FROM samples s JOIN sample_axes a USING (run_id, step, sample_idx)
               WHERE s.run_id = $1 AND a.kind = $2 AND a.axis = $3 AND list_contains($4, s.step)
               ORDER BY s.step, s.sample_idx""",
            [run_id, kind, axis, list(map(int, steps))],
        )

    def first_run_records(self) -> pl.DataFrame:
        """Each run's first run record: run_id, config, reward_weights (JSON strings)."""
        return self.sql(
            "SELECT run_id, arg_min(config, segment) AS config, arg_min(reward_weights, segment) AS reward_weights "
            "FROM segments GROUP BY run_id")

    def sampled_run_records(self) -> pl.DataFrame:
        """Runs that logged samples: run_id, config, reward_weights of their last run record (no set order)."""
        return self.sql(
            """SELECT r.run_id, s.config, s.reward_weights FROM runs r LEFT JOIN (
               SELECT * FROM segments
               QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY segment DESC) = 1) s USING (run_id)
           WHERE coalesce(r.n_samples, 0) > 0"""
        )

    def truncation(self) -> pl.DataFrame:
        """Share of truncated samples per run and step: run_id, step, truncated."""
        return self.sql("SELECT run_id, step, avg(truncated::DOUBLE) AS truncated FROM samples "
                        "GROUP BY run_id, step ORDER BY run_id, step")

    def ingest_errors(self) -> pl.DataFrame:
        """Every skipped log line: run_id, line, field, message, by run and line."""
        return self.sql("SELECT run_id, line, field, message FROM ingest_errors ORDER BY run_id, line")

    def ingest_notes(self) -> pl.DataFrame:
        """Fields read with their default, per log and (field, message): log_path, line (the first), lines."""
        return self.sql("""SELECT log_path, field, message, min(line) AS line, sum(lines)::BIGINT AS lines
                           FROM ingest_notes GROUP BY ALL ORDER BY log_path, line, field""")

    def axis_counts(self) -> pl.DataFrame:
        """How many sample axes of each kind every run logged: run_id, kind, axes."""
        return self.sql("""SELECT s.run_id, k.kind, count(DISTINCT k.name) AS axes
                           FROM (SELECT DISTINCT run_id, axis_set FROM _samples) s
                           JOIN _key_sets k ON k.set_id = s.axis_set GROUP BY ALL ORDER BY ALL""")

    def bad_line_runs(self) -> pl.DataFrame:
        """Runs with skipped lines: log_path, lines, bad_lines and their first error's line, field, message."""
        return self.sql("""SELECT r.log_path, r.lines, r.bad_lines, e.line, e.field, e.message
                      FROM runs r JOIN (SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY line) AS k
                                        FROM ingest_errors) e ON e.run_id = r.run_id AND e.k = 1
                      WHERE r.bad_lines > 0 ORDER BY r.run_id""")

    def write_table(self, name: str, frame: pl.DataFrame) -> None:
        """Replace derived table ``name`` (one of ``fitness``, ``correlations``, ...)."""
        if name not in DERIVED_TABLES:
            raise ValueError(f"{name!r} is not a derived table; expected one of {', '.join(DERIVED_TABLES)}")
        self._con.register("_frame", frame.to_arrow())
        self._con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _frame")
        self._con.unregister("_frame")


def open_runs(
    path: str | Path, db_path: str | Path | None = None, *, ingest_new: bool = True, read_only: bool = True,
    format: str = "auto",
) -> Runs:
    """Open the runs under ``path`` (a runs directory or a ``.duckdb`` file).

    For a directory, new log lines are ingested first (``ingest_new=False``
    skips that); ``format`` is :func:`~analysis.db.ingest`'s (``auto``, ``rg-tracer``, ``trl``, ``verl``). Read-only by default, but DuckDB still keeps other processes
    from writing while it is open: ``close()`` it (or use ``with``) before running
    ``rg-tracer ingest``/``analyze`` on the same database.
    """
    path = Path(path)
    if path.is_dir():
        db = Path(db_path) if db_path else path / DEFAULT_DB
        if ingest_new:
            ingest(path, db, progress=False, format=format)
        return Runs(db, read_only=read_only)
    if path.exists():
        return Runs(path, read_only=read_only)
    raise IngestError(f"{path} does not exist; pass a runs directory or an rg-tracer .duckdb file")
