"""TensorBoard event files from an rg-tracer database: one event directory per run.

``rg-tracer export tensorboard RUNS_DIR --out DIR`` reads the runs with
:func:`analysis.open_runs` and hands the frames here:

* :func:`scalar_series` (pure) turns ``Runs.step_stats()``, ``Runs.metrics()`` and
  ``Runs.evals()`` into one long frame ``run_id, tag, step, value`` with the tags

  ====================== ====================================================================
  ``reward/<axis>``      mean over the step's samples of reward axis ``<axis>``
  ``tag/<name>``         mean over the step's samples of tag ``<name>``
  ``verifier/<name>``    mean over the step's samples of verifier signal ``<name>``
  ``rl/<metric>``        the step's RL metric (``rl/loss``, ``rl/kl``, ``rl/upstream/...``)
  ``eval/<split>/<axis>`` the eval record's value for ``<split>`` at that step
  ====================== ====================================================================

* :func:`write_events` writes them with TensorBoard's own framework-free writer
  (``tensorboard.summary.Writer``; values are stored as float32, as TensorBoard stores
  every scalar) into ``DIR/<run_id>/``, replacing only the ``events.out.tfevents.*``
  files directly in the directories of the runs it writes. Every point carries the run's
  start time as its wall time (the log's per-step times are not exported): read the plots
  against Step.

Imports neither torch nor (until :func:`write_events` runs) tensorboard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from rg_tracer.errors import UserError

__all__ = ["EXTRA", "EVENTS_GLOB", "RunEvents", "scalar_series", "write_events"]

#: How to install the writer, as printed when tensorboard is missing.
EXTRA = "pip install 'rg-tracer[tensorboard]'"
#: The files an export owns (and replaces) in a run's directory.
EVENTS_GLOB = "events.out.tfevents.*"

_SCHEMA = {"run_id": pl.String, "tag": pl.String, "step": pl.Int64, "value": pl.Float64}
_DESCRIPTIONS = {
    "reward": "mean over the step's samples of the reward axis",
    "tag": "mean over the step's samples of the tag",
    "verifier": "mean over the step's samples of the verifier signal",
    "rl": "RL metric of the step",
    "eval": "eval record (split/axis) at the step",
}


@dataclass
class RunEvents:
    """What :func:`write_events` wrote for one run."""

    run_id: str
    path: Path
    scalars: int
    tags: list[str] = field(default_factory=list)


def scalar_series(step_stats: pl.DataFrame, metrics: pl.DataFrame, evals: pl.DataFrame) -> pl.DataFrame:
    """``run_id, tag, step, value`` for every scalar to export, sorted; null values dropped.

    ``step_stats``: ``run_id, kind, axis, step, mean`` (``Runs.step_stats()``);
    ``metrics``: ``run_id, step, metric, value`` (``Runs.metrics()``);
    ``evals``: ``run_id, step, split, axis, value`` (``Runs.evals()``).
    """
    parts = [
        step_stats.select("run_id", pl.concat_str("kind", pl.lit("/"), "axis").alias("tag"), "step",
                          pl.col("mean").alias("value")),
        metrics.select("run_id", pl.concat_str(pl.lit("rl/"), "metric").alias("tag"), "step", "value"),
        evals.select("run_id", pl.concat_str(pl.lit("eval/"), "split", pl.lit("/"), "axis").alias("tag"), "step",
                     "value"),
    ]
    frames = [p.cast(_SCHEMA) for p in parts if p.height]
    if not frames:
        return pl.DataFrame(schema=_SCHEMA)
    return pl.concat(frames).drop_nulls("value").sort("run_id", "tag", "step")


def _writer_class():
    try:
        from tensorboard.summary import Writer
    except ImportError:
        raise UserError(f"writing TensorBoard events needs the tensorboard package: {EXTRA}") from None
    return Writer


def _run_dir(out_dir: Path, run_id: str) -> Path:
    rel = Path(run_id)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise UserError(f"run id {run_id!r} is not a relative path; cannot place its events under {out_dir}")
    target = out_dir / rel
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file; the events of run {run_id!r} go in a directory of that name")
    return target


def write_events(series: pl.DataFrame, out_dir: str | Path, run_ids: Iterable[str] | None = None,
                 wall_times: Mapping[str, float | None] | None = None) -> list[RunEvents]:
    """Write ``series`` (from :func:`scalar_series`) as one event directory per run, ``out_dir/<run_id>/``.

    ``run_ids`` (default: those in ``series``) sets which runs are written; a run without a
    scalar is left out. Old ``events.out.tfevents.*`` files directly in a written run's
    directory are removed first; nothing else under ``out_dir`` is touched.
    ``wall_times`` gives each run's wall time (seconds since the epoch; default 0).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; pass a directory for the event files")
    writer_class = _writer_class()
    by_run = {key[0]: part for key, part in series.partition_by("run_id", as_dict=True).items()}
    wanted = list(dict.fromkeys(run_ids if run_ids is not None else sorted(by_run)))
    targets = {run_id: _run_dir(out_dir, run_id) for run_id in wanted if run_id in by_run}  # all checked first
    written = []
    for run_id, target in targets.items():
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob(EVENTS_GLOB):
            if old.is_file():
                old.unlink()
        wall = float((wall_times or {}).get(run_id) or 0.0)
        part = by_run[run_id]
        writer = writer_class(str(target))
        seen: set[str] = set()
        try:
            for tag, step, value in part.select("tag", "step", "value").iter_rows():
                description = None
                if tag not in seen:
                    seen.add(tag)
                    description = _DESCRIPTIONS.get(tag.split("/", 1)[0])
                writer.add_scalar(tag, value, step, wall_time=wall, description=description)
        finally:
            writer.close()
        written.append(RunEvents(run_id, target, part.height, sorted(seen)))
    return written
