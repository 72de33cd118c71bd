"""``analyze_runs``: ingest → compute → render, the whole report in one call.

    rg-tracer analyze runs/ --out reports/      # the CLI wraps this
    analysis.analyze_runs("runs/", "reports/")  # returns reports/index.html
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from analysis.correlations import DEFAULT_MAX_LAG, correlate
from analysis.db import IngestError, IngestResult, ingest
from analysis.db.formats import CONVERTED_DIR
from analysis.db.store import Runs
from analysis.report import foreign_page, report_path_clash, write_index, write_run_page
from analysis.run_summary import RunReport
from analysis.transitions import changes_tables

__all__ = ["analyze_runs", "DRILLDOWN_TRANSITIONS", "DRILLDOWN_STEPS", "DRILLDOWN_SAMPLES", "MAX_AXES"]

DRILLDOWN_TRANSITIONS = 8  # largest |delta| first
#: A run's page is rewritten only when its log, the options or this version changed.
REPORT_VERSION = 8
STAMP = ".report-stamp"
DRILLDOWN_STEPS = 3  # steps looked at either side
DRILLDOWN_SAMPLES = 3  # completions shown either side: the extremes in the direction of the change
#: Most axes of one kind (reward, tag, verifier) a run may have for its axes to be analysed: each
#: costs transitions, correlations with every metric and a panel. A run with more keeps its page
#: (metrics, evals) with a note; its axes stay queryable in ``sample_axes``.
MAX_AXES = 512


def _split(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {key[0]: part for key, part in frame.partition_by(["run_id"], as_dict=True).items()}


def _drilldown(runs: Runs, run_id: str, transitions: pl.DataFrame) -> list[tuple[dict, pl.DataFrame, pl.DataFrame]]:
    out = []
    biggest = transitions.sort(pl.col("delta").abs(), descending=True).head(DRILLDOWN_TRANSITIONS)
    for t in biggest.sort(["kind", "axis", "onset_step"]).iter_rows(named=True):
        before = range(t["onset_step"] - DRILLDOWN_STEPS, t["onset_step"])
        after = range(t["end_step"], t["end_step"] + DRILLDOWN_STEPS)
        found = runs.completions_at(run_id, t["kind"], t["axis"], [*before, *after])
        rising = t["delta"] > 0  # show the old behaviour at its most typical of "before", and the new of "after"
        out.append((
            t,
            found.filter(pl.col("step") < t["onset_step"]).sort("value", descending=not rising).head(DRILLDOWN_SAMPLES),
            found.filter(pl.col("step") >= t["end_step"]).sort("value", descending=rising).head(DRILLDOWN_SAMPLES),
        ))
    return out


def _json(value: object) -> dict:
    return json.loads(value) if isinstance(value, str) else (value or {})


def _rl_steps(metrics: pl.DataFrame, first: dict[str, dict]) -> pl.DataFrame:
    """``metrics`` without each run's supervised warm-up steps (``sft_steps`` of its first run record)."""
    warmup = {run_id: _json(r.get("config")).get("sft_steps") or 0 for run_id, r in first.items()}
    if not any(warmup.values()):
        return metrics
    bounds = pl.DataFrame({"run_id": list(warmup), "warmup": [int(v) for v in warmup.values()]})
    return metrics.join(bounds, on="run_id", how="left").filter(
        pl.col("step") > pl.col("warmup").fill_null(0)).drop("warmup")


def _too_wide(runs: Runs) -> dict[str, str]:
    """Runs with more than :data:`MAX_AXES` axes of one kind, and the note that says so."""
    out = {}
    for r in runs.axis_counts().filter(pl.col("axes") > MAX_AXES).iter_rows(named=True):
        out.setdefault(r["run_id"], f"{r['run_id']}: {r['axes']} {r['kind']} axes, more than the {MAX_AXES} the "
                       "report analyses per run; its axes are left out of the report (they are in the sample_axes "
                       "table): log fewer axes, e.g. one per reward function")
    return out


def _notes(result: IngestResult, runs: Runs) -> list[str]:
    """Warnings for the index page: files left out, rewritten logs, skipped lines and fields read
    with a default (from the database)."""
    notes = list(result.notes)
    notes += [f"{f.path}: " + ("converted again from its run's changed files" if CONVERTED_DIR in f.path.as_posix()
                               else "the log was rewritten") + ", so it was read again from the start"
              for f in result.files if f.restarted]
    for r in runs.ingest_notes().iter_rows(named=True):
        notes.append(f"{r['log_path']}: {r['lines']} line(s) read with a default, first at line {r['line']}: "
                     f"{r['field']}: {r['message']}")
    bad = runs.bad_line_runs()
    for r in bad.iter_rows(named=True):
        if r["bad_lines"] >= r["lines"]:
            notes.append(f"{r['log_path']}: not an rg-tracer JSONL log ({r['bad_lines']} unreadable lines); skipped")
        else:
            notes.append(f"{r['log_path']}: skipped {r['bad_lines']} bad line(s), first at line {r['line']}: "
                         f"{r['field']}: {r['message']}")
    return notes


def analyze_runs(
    runs_dir: str | Path,
    out_dir: str | Path = "reports/all",
    db_path: str | Path | None = None,
    *,
    max_lag: int = DEFAULT_MAX_LAG,
    progress: bool | None = None,
    ingested: IngestResult | None = None,
    format: str = "auto",
) -> Path:
    """Ingest ``runs_dir``, compute every table, write the report; return ``index.html``.

    The computed tables are also stored in the database (``fitness``,
    ``task_fitness``, ``correlations``, ``lead_lag``, ``transitions``). A run
    page whose log has not changed since it was written is kept as it is.

    ``ingested``: the result of an :func:`~analysis.db.ingest` of ``runs_dir`` into ``db_path``
    the caller has just made (the CLI does, to print it); then nothing is ingested again, and
    its notes (a rewritten log) reach the report.

    ``format``: ``auto`` (each run directory's format detected), or the one format to read:
    ``rg-tracer``, ``trl``, ``verl`` (``docs/peers.md``).
    """
    result = ingested if ingested is not None else ingest(runs_dir, db_path, progress=progress, format=format)
    out = Path(out_dir)
    with Runs(result.db_path, read_only=False) as runs:
        clash = report_path_clash(runs.run_ids())
        if clash:
            raise IngestError(f"{clash}; rename one of the run directories under {runs_dir} (or report them "
                              "into separate --out directories)")
        foreign = foreign_page(out, runs.run_ids())
        if foreign:
            raise IngestError(foreign)
        out.mkdir(parents=True, exist_ok=True)
        wide = _too_wide(runs)
        fitness = runs.fitness().filter(~pl.col("run_id").is_in(list(wide)))
        task_fitness = runs.fitness(by_task=True).filter(~pl.col("run_id").is_in(list(wide)))
        metrics = runs.metrics()
        first = {r["run_id"]: r for r in runs.first_run_records().iter_rows(named=True)}
        correlations, xcorr = correlate(fitness, _rl_steps(metrics, first), max_lag=max_lag)
        transitions, transition_notes = changes_tables(fitness)
        for name, frame in (("fitness", fitness), ("task_fitness", task_fitness), ("correlations", correlations),
                            ("lead_lag", xcorr), ("transitions", transitions)):
            runs.write_table(name, frame)
        truncation = runs.truncation()
        tables = {"fitness": fitness, "task_fitness": task_fitness, "metrics": metrics, "evals": runs.evals(),
                  "correlations": correlations, "xcorr": xcorr, "transitions": transitions,
                  "transition_notes": transition_notes, "truncation": truncation}
        parts = {name: _split(frame) for name, frame in tables.items()}
        errors = _split(runs.ingest_errors())
        reports = []
        for run in runs.runs().iter_rows(named=True):
            run_id = run["run_id"]
            frames = {name: parts[name].get(run_id, frame.clear()) for name, frame in tables.items()}
            record = first.get(run_id, {})
            rr = RunReport(run_id=run_id, run=run, **frames, reward_weights=_json(record.get("reward_weights")),
                           config=_json(record.get("config")),
                           errors=errors.get(run_id, pl.DataFrame()).head(20).to_dicts())
            reports.append(rr)
            stamp = out / run_id / STAMP
            key = json.dumps([REPORT_VERSION, max_lag, run["lines"], run["bad_lines"], str(run["ingested_at"])])
            if stamp.is_file() and stamp.read_text() == key and (out / run_id / "index.html").is_file():
                continue  # nothing new in this run since its page was written
            rr.drilldown = _drilldown(runs, run_id, rr.transitions)
            write_run_page(out, rr)
            stamp.write_text(key)
        notes = list(wide.values()) + _notes(result, runs)
        return write_index(out, reports, fitness, notes, {rr.run_id: rr.config for rr in reports})
