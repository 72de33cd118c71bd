"""Which RL metric moves with, or before, each reward axis: correlation and lead/lag tables.

For every run, reward axis (its per-step ``mean``) and RL metric. This module builds the
tables; the method is in the modules it builds on, each with its references and how it
departs from them: the step grid and the alignment of sparse series
(:mod:`analysis.step_series`), aliases (:mod:`analysis.metric_aliases`), the AR prewhitening
filter and Bartlett's variance (:mod:`analysis.prewhitening`), r(k) over the lags and its
block bootstrap (:mod:`analysis.lag_profile`), the lead/lag test and relation of a pair
(:mod:`analysis.lead_lag_test`), and r, p-values, BH and Sidak
(:mod:`analysis.correlation_stats`).

**Correlations** (one row per run x axis x metric):

* Pearson and Spearman r on *levels*, without p-values (``pearson_p``, ``spearman_p`` and their
  ``_p_adj`` are null): levels of autocorrelated series correlate whatever drives them, and a
  t-test on them is the spurious regression of Yule (1926) and Granger & Newbold (1974).
* Pearson and Spearman r on *first differences*, with p-values from Bartlett's (1935) variance
  of a correlation between two autocorrelated series: effective n = n / (1 + 2 sum_j rho_x(j)
  rho_y(j)), j = 1..10, factor clipped at >= 1 (Pyper & Peterman 1998). Differencing a
  stationary series makes MA(1) noise, for which the plain Student t test rejects ~12% of
  true nulls at 5%.
* ``r0``: the same-step correlation of the two series prewhitened by the pair's common filter
  (:mod:`analysis.lead_lag_test`), with its p (``r0_p``, Bartlett variance) and BH across the
  run's pairs (``r0_p_adj``): the heat map's stars.
* The lead/lag columns (``relation``, ``best_lag``, ``pair_p``, ...): one test per pair
  (:mod:`analysis.lead_lag_test`), then BH across the run's pairs (``pair_p_adj``) and, inside
  the selected pairs, over their lags (``xcorr``'s ``p_adj``).

Caveats: p-values assume the filtered series are stationary, so they are optimistic when an
axis changes only in a short transient and is flat otherwise (look at the curves); and a
correlation is not a cause: a metric that leads an axis may share a driver with it.
``benchmarks/calibrate_leadlag.py`` measures false-finding rates, power and FDR on synthetic
runs with known truth (table in docs/analysis.md).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import polars as pl

from analysis.correlation_stats import bh_adjust
from analysis.lead_lag_test import ALPHA, _classify, _pair, _Pair
from analysis.metric_aliases import _aliases
from analysis.step_series import _Series

__all__ = [
    "DEFAULT_MAX_LAG",
    "DEFAULT_EXCLUDE",
    "correlate",
    "lead_lag",
]

#: Largest lag looked at, in steps (for a metric logged every N steps: rounded up to a multiple of N).
DEFAULT_MAX_LAG = 25
#: Metrics that are aggregates of the axes themselves (``reward/mean``,
#: ``reward_mean/<axis>``, ``safety_reward_ema/<axis>``, ``safety_tag_ema/<tag>``):
#: correlating them with the axes tells nothing.
DEFAULT_EXCLUDE = r"reward|_ema/"
_RELATIONS = ("lead", "lag", "same_step")


_FAMILIES = ("pearson", "spearman", "diff_pearson", "diff_spearman")
_CORR_SCHEMA = {
    "run_id": pl.String, "kind": pl.String, "axis": pl.String, "metric": pl.String, "n": pl.Int64,
    **{f"{name}_{part}": pl.Float64 for name in _FAMILIES for part in ("r", "p")},
    **{f"{name}_p_adj": pl.Float64 for name in _FAMILIES},
    "best_lag": pl.Int64, "lag_r": pl.Float64, "lag_p": pl.Float64, "lag_p_adj": pl.Float64,
    "lead_k": pl.Int64, "lead_r": pl.Float64, "lead_p": pl.Float64, "lead_p_adj": pl.Float64,
    "relation": pl.String, "pair_p": pl.Float64, "pair_p_adj": pl.Float64,
    "lag_ci_lo": pl.Int64, "lag_ci_hi": pl.Int64,
    "r0": pl.Float64, "r0_p": pl.Float64, "r0_p_adj": pl.Float64,
    "aliases": pl.String, "every": pl.Int64,
}
_LAG_SCHEMA = {"run_id": pl.String, "kind": pl.String, "axis": pl.String, "metric": pl.String,
               "lag": pl.Int64, "r": pl.Float64, "p": pl.Float64, "n": pl.Int64, "p_adj": pl.Float64}


def _run_tables(run_id: str, axes: pl.DataFrame, metrics: pl.DataFrame, max_lag: int) -> tuple[list[dict], list[dict]]:
    axis_series = {
        (kind, axis): _Series.of(g["step"].to_numpy(), g["mean"].cast(pl.Float64).fill_null(np.nan).to_numpy())
        for (kind, axis), g in axes.group_by(["kind", "axis"], maintain_order=True)
    }
    metric_series = {
        name: _Series.of(g["step"].to_numpy(), g["value"].cast(pl.Float64).to_numpy())
        for (name,), g in metrics.group_by(["metric"], maintain_order=True)
    }
    aliases = _aliases(metric_series)
    hidden = {nm for names in aliases.values() for nm in names}
    pairs: list[_Pair] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for (kind, axis), a_ser in axis_series.items():
            for metric, m_ser in metric_series.items():
                if metric in hidden:
                    continue
                pair = _pair(kind, axis, metric, a_ser, m_ser, max_lag)
                _classify(pair)
                pairs.append(pair)
    # Stage 1 (pairs): BH over the run's pair p-values (1 where a pair cannot be a finding).
    eligible = np.array([pr.row.get("pair_p", np.nan) for pr in pairs], dtype=float)
    pair_adj = bh_adjust(eligible)
    tested = int(np.isfinite(eligible).sum())
    findings = int((pair_adj < ALPHA).sum())
    for name in ("diff_pearson", "diff_spearman", "r0"):
        adj = bh_adjust(np.array([pr.row.get(f"{name}_p", np.nan) for pr in pairs], dtype=float))
        for pr, value in zip(pairs, adj):
            pr.row[f"{name}_p_adj"] = value
    rows, lag_rows = [], []
    for pr, adj in zip(pairs, pair_adj):
        row = pr.row
        row["pair_p_adj"] = adj
        if not adj < ALPHA:
            row["relation"] = "none"
        finding = row["relation"] in _RELATIONS
        shown = row.pop("_report", None) if finding else row.get("_peak")
        row.pop("_report", None)
        row.pop("_peak", None)
        if shown is not None:  # the reported lag: a finding's, else the peak of |r(k)|
            row.update(best_lag=int(pr.ks[shown]) * pr.grid, lag_r=pr.r[shown], lag_p=pr.p[shown])
        row["lag_p_adj"] = adj
        row["lead_p_adj"] = adj if row["relation"] == "lead" else None
        rows.append(dict(run_id=run_id, kind=pr.kind, axis=pr.axis, metric=pr.metric,
                         aliases=",".join(aliases.get(pr.metric, [])), every=pr.every, **row))
        if pr.r is None:
            continue
        # Stage 2 (lags within a selected pair): BH within the pair at level q R / m (Benjamini-Bogomolov).
        if finding:
            within = bh_adjust(pr.p)
            lag_adj = np.minimum(within * tested / max(findings, 1), 1.0)
        else:
            lag_adj = np.full(len(pr.ks), np.nan)
        for k, rk, pk, nk, qk in zip(pr.ks, pr.r, pr.p, pr.n, lag_adj):
            lag_rows.append(dict(run_id=run_id, kind=pr.kind, axis=pr.axis, metric=pr.metric,
                                 lag=int(k) * pr.grid, r=rk, p=pk, n=int(nk), p_adj=qk))
    return rows, lag_rows


def correlate(
    fitness: pl.DataFrame,
    metrics: pl.DataFrame,
    *,
    max_lag: int = DEFAULT_MAX_LAG,
    kinds: tuple[str, ...] = ("reward",),
    exclude: str | None = DEFAULT_EXCLUDE,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(correlations, xcorr) for every run in ``fitness`` (run_id, kind, axis, step, mean).

    ``metrics`` is ``rl_metrics`` (run_id, step, metric, value). ``correlations`` has one
    row per run x axis x metric, aliases collapsed into one row (``aliases``):

    * ``n`` pairs on the pair's grid; ``pearson_r``, ``spearman_r`` on levels (their ``_p``
      and ``_p_adj`` are null); ``diff_pearson_*``, ``diff_spearman_*`` on first differences
      with Bartlett-corrected p and BH ``_p_adj`` across the run's pairs;
    * ``relation`` (``lead``, ``lag``, ``same_step`` or ``none``), ``best_lag`` (steps: the
      finding's lag, else the peak of |r(k)|), ``lag_r`` (r there), ``lag_p`` (that lag's own
      p), ``pair_p``/``pair_p_adj`` (the one test per pair; ``lag_p_adj`` = ``pair_p_adj``;
      < 0.05 exactly for findings), ``lag_ci_lo``/``lag_ci_hi`` (bootstrap, steps),
      ``r0``/``r0_p``/``r0_p_adj`` (same-step prewhitened r), ``every`` (the metric's cadence);
    * ``lead_k``/``lead_r``/``lead_p``: the peak over k >= 1; ``lead_p_adj`` is set only when
      ``relation == "lead"`` (then it is ``pair_p_adj``).

    ``xcorr`` has r, p, n for every lag (steps) of every tested pair, and the lag-level
    ``p_adj`` inside selected pairs (null elsewhere). See the module docstring for the method.
    """
    if max_lag < 0:
        raise ValueError(f"max_lag={max_lag}: must be >= 0")
    fitness = fitness.filter(pl.col("kind").is_in(list(kinds)))
    if exclude:
        pattern = re.compile(exclude)
        names = metrics["metric"].unique().to_list()
        metrics = metrics.filter(~pl.col("metric").is_in([m for m in names if pattern.search(m)]))
    metrics = metrics.drop_nulls("value")
    by_run = metrics.partition_by("run_id", as_dict=True, maintain_order=True) if metrics.height else {}
    corr_parts, lag_parts = [], []
    for (run_id,), axes in fitness.group_by(["run_id"], maintain_order=True):
        run_metrics = by_run.get((run_id,))
        if axes.is_empty() or run_metrics is None or run_metrics.is_empty():
            continue
        rows, lags = _run_tables(run_id, axes, run_metrics, max_lag)
        corr_parts.append(pl.DataFrame([{c: _clean(r.get(c)) for c in _CORR_SCHEMA} for r in rows],
                                       schema=_CORR_SCHEMA))
        lag_parts.append(pl.DataFrame([{c: _clean(r.get(c)) for c in _LAG_SCHEMA} for r in lags],
                                      schema=_LAG_SCHEMA))
    if not corr_parts:
        return pl.DataFrame(schema=_CORR_SCHEMA), pl.DataFrame(schema=_LAG_SCHEMA)
    return pl.concat(corr_parts), pl.concat(lag_parts)


def _clean(value):
    """NaN -> None, numpy scalars -> Python (so polars stores nulls, not NaN)."""
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def lead_lag(correlations: pl.DataFrame, run_id: str) -> list[dict]:
    """``summary.json``'s ``lead_lag``: one entry per tested axis x metric pair, findings first.

    ``p_adj`` (the pair test, BH across the run's pairs) is < 0.05 exactly for findings,
    whose ``relation`` is ``lead``, ``lag`` or ``same_step``; ``best_lag`` and ``lag_ci``
    are in steps (k > 0: the metric's changes come first).
    """
    frame = correlations.filter((pl.col("run_id") == run_id) & pl.col("best_lag").is_not_null())
    if "relation" not in frame.columns:  # a table written before relations existed
        frame = frame.with_columns(relation=pl.lit("none"), lag_ci_lo=pl.lit(None, pl.Int64),
                                   lag_ci_hi=pl.lit(None, pl.Int64), r0=pl.lit(None, pl.Float64),
                                   aliases=pl.lit(""), every=pl.lit(1, pl.Int64))
    rows = frame.sort(
        [pl.col("relation") == "none", pl.col("lag_p_adj"), pl.col("lag_r").abs()],
        descending=[False, False, True], nulls_last=True,
    ).iter_rows(named=True)
    out = []
    for r in rows:
        has_ci = r["lag_ci_lo"] is not None and r["lag_ci_hi"] is not None
        out.append({
            "metric": r["metric"], "axis": r["axis"], "best_lag": int(r["best_lag"]),
            "corr": _num(r["lag_r"]), "p_adj": _num(r["lag_p_adj"]), "relation": r["relation"],
            "lag_ci": [int(r["lag_ci_lo"]), int(r["lag_ci_hi"])] if has_ci else None,
            "r0": _num(r["r0"]), "aliases": [a for a in (r["aliases"] or "").split(",") if a],
            "every": int(r["every"]) if r["every"] is not None else None, "n": r["n"],
        })
    return out


def _num(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)
