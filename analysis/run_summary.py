"""What one run page shows (:class:`RunReport`), and its ``summary.json`` object.

Every number here was computed by :mod:`analysis.fitness`, :mod:`analysis.correlations`,
:mod:`analysis.transitions`, :mod:`analysis.grokking`, :mod:`analysis.findings` and
:mod:`analysis.run_warnings`; :func:`summary` gathers them into one JSON-ready object, once
per report, which the run page (:mod:`analysis.report`, :mod:`analysis.report_sections`) and
the index page both read. ``summary.json`` is documented in ``docs/analysis.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl

from analysis.correlations import lead_lag
from analysis.findings import axis_key as _axis_key
from analysis.findings import run_findings
from analysis.run_warnings import run_warnings
from analysis.grokking import GrokkingSummary, grokking_summary

__all__ = ["RunReport", "summary"]

#: eval accuracy that counts as "memorised" (train split) and "generalised" (test split)
GROK_THRESHOLD = 0.9


@dataclass
class RunReport:
    """Everything one run page shows (frames already filtered to the run)."""

    run_id: str
    run: dict
    fitness: pl.DataFrame
    task_fitness: pl.DataFrame
    metrics: pl.DataFrame
    evals: pl.DataFrame
    correlations: pl.DataFrame
    xcorr: pl.DataFrame
    transitions: pl.DataFrame
    transition_notes: pl.DataFrame = field(default_factory=pl.DataFrame)
    truncation: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"step": pl.Int64,
                                                                                 "truncated": pl.Float64}))
    reward_weights: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # of the run's first run record
    drilldown: list[tuple[dict, pl.DataFrame, pl.DataFrame]] = field(default_factory=list)
    grok_threshold: float = GROK_THRESHOLD
    errors: list[dict] = field(default_factory=list)
    cache: dict = field(default_factory=dict, repr=False)  # summary and grokking call, computed once

    @property
    def warmup(self) -> int:
        """Supervised warm-up steps (``sft_steps`` of the run's config): 1..warmup are not RL."""
        value = self.config.get("sft_steps") or 0
        return value if isinstance(value, int) and value > 0 else 0

    @property
    def rl_metrics(self) -> pl.DataFrame:
        """``metrics`` of the RL steps only: a warm-up's cross-entropy and entropy are another regime."""
        return self.metrics.filter(pl.col("step") > self.warmup) if self.warmup else self.metrics


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _transition_dict(t: dict) -> dict:
    return {"onset_step": t["onset_step"], "end_step": t["end_step"], "before": _finite(t["before"]),
            "after": _finite(t["after"]), "shape": t.get("shape"), "size": _finite(t.get("size")),
            "z": _finite(t.get("z")), "p_value": _finite(t.get("p_value")),
            "interval": [t.get("onset_lo"), t.get("end_hi")]}


def _grokking(rr: RunReport) -> GrokkingSummary:
    if "grokking" not in rr.cache:
        rr.cache["grokking"] = grokking_summary(rr.evals, threshold=rr.grok_threshold)
    return rr.cache["grokking"]


def summary(rr: RunReport) -> dict:
    """The ``summary.json`` object of one run (computed once per report)."""
    if "summary" not in rr.cache:
        rr.cache["summary"] = _summary(rr)
    return rr.cache["summary"]


def _summary(rr: RunReport) -> dict:
    axes: dict[str, dict] = {}
    notes = {(r["kind"], r["axis"]): r["reason"] for r in rr.transition_notes.iter_rows(named=True)} \
        if not rr.transition_notes.is_empty() else {}
    for (kind, axis), frame in sorted(rr.fitness.partition_by(["kind", "axis"], as_dict=True).items()):
        last = frame.sort("step").tail(1).row(0, named=True)
        trans = rr.transitions.filter((pl.col("kind") == kind) & (pl.col("axis") == axis)).sort("onset_step")
        axes[_axis_key(kind, axis)] = {
            "kind": kind,
            "final_mean": _finite(last["mean"]),
            "final_ema": _finite(last["ema"]),
            "transitions": [_transition_dict(t) for t in trans.iter_rows(named=True)],
            "transitions_note": notes.get((kind, axis)),
        }
    links = lead_lag(rr.correlations, rr.run_id)
    grokking = _grokking(rr).to_dict()
    return {
        "run_id": rr.run_id,
        "steps": int(rr.run.get("n_steps") or 0),
        "last_step": rr.run.get("last_step"),
        "status": rr.run.get("status"),
        "warnings": _jsonable(run_warnings(rr.fitness, rr.rl_metrics, rr.evals, rr.transitions, rr.truncation,
                                           rr.reward_weights, rr.config.get("max_new_tokens"))),
        "findings": [{k: _jsonable(v) for k, v in f.items()} for f in run_findings(rr.transitions, links, grokking)],
        "axes": axes,
        "lead_lag": links,
        "grokking": grokking,
    }


def _jsonable(value: object) -> object:
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value
