"""Which RL metric moves with, or before, each reward axis: correlation tables.

For every run, reward axis (its per-step ``mean``) and RL metric:

* Pearson and Spearman on levels, and on first differences (levels of two
  trending series correlate whatever drives them; differences much less so);
* lagged cross-correlation over lags -K..K of the *prewhitened* series:
  ``r(k) = corr(e_metric[t], e_axis[t + k])``, so **k > 0 means the metric's
  changes precede the axis's by k steps**; ``best_lag`` maximises ``|r(k)|``
  (ties go to the smaller ``|k|``). Prewhitening (Haugh): each series is
  replaced by the residuals of its own AR(p) model (p <= 10 by AIC), so that
  neither is autocorrelated and r(k) has its textbook null distribution.
  Without it, autocorrelation fakes leads: plain first differences of two
  noisy series that move together at k = 0 also "correlate" at k = +-1 with
  r(0) / -2, and two trends correlate at every lag. For a random walk the
  filter is close to differencing, for white noise close to nothing;
* p-values corrected with Benjamini-Hochberg within each family of tests of a
  run: each of the four correlations over all (axis, metric) pairs, and the
  lagged one over all (axis, metric, lag) triples.

Steps are aligned on their numbers, not their positions: a missing step
leaves a gap, and a difference or a lagged pair that crosses it is dropped.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import polars as pl
from scipy.special import stdtr

__all__ = [
    "DEFAULT_MAX_LAG",
    "DEFAULT_EXCLUDE",
    "pearson",
    "spearman",
    "lagged_xcorr",
    "ar_fit",
    "ar_residuals",
    "bh_adjust",
    "correlate",
    "lead_lag",
]

DEFAULT_MAX_LAG = 10
#: Metrics that are aggregates of the axes themselves (``reward/mean``,
#: ``reward_mean/<axis>``, ``safety_reward_ema/<axis>``, ``safety_tag_ema/<tag>``):
#: correlating them with the axes tells nothing.
DEFAULT_EXCLUDE = r"reward|_ema/"
_MIN_PAIRS = 4
#: A series whose value changes at fewer steps than this (and 1% of its steps)
#: is treated as constant: a few blips cannot carry a correlation.
MIN_CHANGES = 10


def _flat(v: np.ndarray) -> bool:
    """Constant up to rounding (a filtered constant is not exactly constant)."""
    return bool(np.ptp(v) <= 1e-9 * np.abs(v).max())


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """Pearson r, two-sided p and n over pairs where both are finite."""
    mask = np.isfinite(x) & np.isfinite(y)
    n = int(mask.sum())
    if n < _MIN_PAIRS or _flat(x[mask]) or _flat(y[mask]):
        return np.nan, np.nan, n
    xs, ys = x[mask] - x[mask].mean(), y[mask] - y[mask].mean()
    denom = np.sqrt((xs * xs).sum() * (ys * ys).sum())
    if denom == 0 or not np.isfinite(denom):
        return np.nan, np.nan, n
    r = float(np.clip((xs * ys).sum() / denom, -1.0, 1.0))
    if abs(r) == 1.0:
        return r, 0.0, n
    t = r * np.sqrt((n - 2) / (1 - r * r))
    return r, float(2 * stdtr(n - 2, -abs(t))), n  # two-sided Student t, as scipy.stats.pearsonr


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman rho and p: Pearson on average ranks, t-distributed p (as scipy.stats.spearmanr)."""
    mask = np.isfinite(x) & np.isfinite(y)
    if mask.sum() < _MIN_PAIRS:
        return np.nan, np.nan
    rx = pl.Series(x[mask]).rank("average").to_numpy().astype(float)
    ry = pl.Series(y[mask]).rank("average").to_numpy().astype(float)
    r, p, _ = pearson(rx, ry)
    return r, p


def lagged_xcorr(metric: np.ndarray, axis: np.ndarray, max_lag: int) -> pl.DataFrame:
    """``r(k) = corr(metric[t], axis[t + k])`` for k in -max_lag..max_lag (NaN = gap)."""
    rows = []
    length = len(metric)
    for k in range(-max_lag, max_lag + 1):
        if k >= 0:
            a, b = metric[: max(length - k, 0)], axis[k:]
        else:
            a, b = metric[-k:], axis[: max(length + k, 0)]
        r, p, n = pearson(a, b)
        rows.append((k, r, p, n))
    return pl.DataFrame(rows, schema={"lag": pl.Int64, "r": pl.Float64, "p": pl.Float64, "n": pl.Int64}, orient="row")


def ar_fit(x: np.ndarray, max_order: int = 10) -> np.ndarray:
    """AR coefficients ``a_1..a_p`` of ``x`` (least squares with an intercept; p by AIC).

    Orders 0..max_order are compared on the same rows (those with every lag
    finite); returns an empty array for order 0 or too short a series, and
    ``[1.0]`` (first differences) when the lags are collinear.
    """
    x = np.asarray(x, dtype=float)
    n = len(x)
    order = min(max_order, n // 10)
    if order < 1:
        return np.zeros(0)
    lagged = np.column_stack([x[order - i : n - i] for i in range(1, order + 1)])  # (T, order): x[t - i]
    target = x[order:]
    ok = np.isfinite(target) & np.isfinite(lagged).all(axis=1)
    t_rows = int(ok.sum())
    if t_rows < 3 * (order + 1):
        return np.zeros(0)
    # Centred normal equations: one Gram matrix serves every order (the intercept is the centring).
    y = target[ok] - target[ok].mean()
    lags = lagged[ok] - lagged[ok].mean(axis=0)
    gram, cross, total = lags.T @ lags, lags.T @ y, float(y @ y)
    best, best_aic = np.zeros(0), t_rows * np.log(max(total / t_rows, 1e-300)) + 2
    for p in range(1, order + 1):
        try:
            coef = np.linalg.solve(gram[:p, :p], cross[:p])
        except np.linalg.LinAlgError:  # collinear lags: constant over the fitted rows
            return np.ones(1) if p == 1 else best
        sse = total - float(coef @ cross[:p])
        aic = t_rows * np.log(max(sse / t_rows, 1e-300)) + 2 * (p + 1)
        if aic < best_aic:
            best, best_aic = coef, aic
    return best


def ar_residuals(x: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """``x[t] - sum_i coefs[i-1] * x[t-i]`` (NaN for the first p steps and after a gap)."""
    x = np.asarray(x, dtype=float)
    out = x.copy()
    for i, a in enumerate(coefs, start=1):
        out[i:] -= a * x[:-i]
    out[: len(coefs)] = np.nan
    return out


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN p-values stay NaN and are not counted."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        # imported here: statsmodels pulls in scipy.stats (slow, and it probes torch)
        from statsmodels.stats.multitest import multipletests

        out[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return out


def _changes(v: np.ndarray) -> bool:
    d = np.diff(v)
    d = d[np.isfinite(d)]
    return int(np.count_nonzero(d)) >= max(MIN_CHANGES, 0.01 * len(d))


def _dense(frame: pl.DataFrame, key: str, value: str, lo: int, hi: int) -> dict[str, np.ndarray]:
    out = {}
    for (name,), group in frame.group_by([key], maintain_order=True):
        arr = np.full(hi - lo + 1, np.nan)
        arr[group["step"].to_numpy() - lo] = group[value].to_numpy()
        out[name] = arr
    return out


def _run_tables(axes: pl.DataFrame, metrics: pl.DataFrame, max_lag: int) -> tuple[list[dict], list[dict]]:
    lo = int(min(axes["step"].min(), metrics["step"].min()))
    hi = int(max(axes["step"].max(), metrics["step"].max()))
    axis_series = _dense(axes.with_columns(key=pl.col("kind") + "\x00" + pl.col("axis")), "key", "mean", lo, hi)
    metric_series = _dense(metrics, "metric", "value", lo, hi)
    metric_series = {k: v if _changes(v) else np.full_like(v, np.nan) for k, v in metric_series.items()}
    axis_series = {k: v if _changes(v) else np.full_like(v, np.nan) for k, v in axis_series.items()}
    rows, lags = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whitened = {metric: ar_residuals(m, ar_fit(m)) for metric, m in metric_series.items()}
        for key, a in axis_series.items():
            kind, axis = key.split("\x00", 1)
            white_axis = ar_residuals(a, ar_fit(a))
            da = np.diff(a)
            for metric, m in metric_series.items():
                dm = np.diff(m)
                r, p, n = pearson(m, a)
                sr, sp = spearman(m, a)
                dr, dp, _ = pearson(dm, da)
                dsr, dsp = spearman(dm, da)
                xc = lagged_xcorr(whitened[metric], white_axis, max_lag)
                lags += [dict(kind=kind, axis=axis, metric=metric, **row) for row in xc.iter_rows(named=True)]
                rows.append(dict(kind=kind, axis=axis, metric=metric, n=n, pearson_r=r, pearson_p=p,
                                 spearman_r=sr, spearman_p=sp, diff_pearson_r=dr, diff_pearson_p=dp,
                                 diff_spearman_r=dsr, diff_spearman_p=dsp))
    return rows, lags


_CORR_SCHEMA = {
    "run_id": pl.String, "kind": pl.String, "axis": pl.String, "metric": pl.String, "n": pl.Int64,
    **{f"{name}_{part}": pl.Float64 for name in ("pearson", "spearman", "diff_pearson", "diff_spearman")
       for part in ("r", "p")},
}
_FAMILIES = ("pearson", "spearman", "diff_pearson", "diff_spearman")
_LAG_SCHEMA = {"run_id": pl.String, "kind": pl.String, "axis": pl.String, "metric": pl.String,
               "lag": pl.Int64, "r": pl.Float64, "p": pl.Float64, "n": pl.Int64}


def correlate(
    fitness: pl.DataFrame,
    metrics: pl.DataFrame,
    *,
    max_lag: int = DEFAULT_MAX_LAG,
    kinds: tuple[str, ...] = ("reward",),
    exclude: str | None = DEFAULT_EXCLUDE,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(correlations, xcorr) for every run in ``fitness`` (run_id, kind, axis, step, mean).

    ``metrics`` is ``rl_metrics`` (run_id, step, metric, value). ``correlations``
    has one row per run × axis × metric with r, p and BH-adjusted ``*_p_adj``
    for each correlation, plus ``best_lag``/``lag_r``/``lag_p``/``lag_p_adj`` at
    the best lag and ``lead_k``/``lead_r``/``lead_p``/``lead_p_adj`` at the best
    lag k >= 1 (the metric first); ``xcorr`` has r, p, n, p_adj for every lag.
    """
    if max_lag < 0:
        raise ValueError(f"max_lag={max_lag}: must be >= 0")
    fitness = fitness.filter(pl.col("kind").is_in(list(kinds)))
    if exclude:
        pattern = re.compile(exclude)
        metrics = metrics.filter(~pl.col("metric").map_elements(lambda m: bool(pattern.search(m)), pl.Boolean))
    metrics = metrics.drop_nulls("value")
    corr_parts, lag_parts = [], []
    for (run_id,), axes in fitness.group_by(["run_id"], maintain_order=True):
        run_metrics = metrics.filter(pl.col("run_id") == run_id)
        if axes.is_empty() or run_metrics.is_empty():
            continue
        rows, lags = _run_tables(axes, run_metrics, max_lag)
        corr = pl.DataFrame([{"run_id": run_id, **r} for r in rows], schema=_CORR_SCHEMA)
        xcorr = pl.DataFrame([{"run_id": run_id, **r} for r in lags], schema=_LAG_SCHEMA)
        corr = corr.with_columns(
            pl.Series(f"{name}_p_adj", bh_adjust(corr[f"{name}_p"].to_numpy()))
            for name in _FAMILIES
        )
        corr_parts.append(corr)
        lag_parts.append(xcorr.with_columns(pl.Series("p_adj", bh_adjust(xcorr["p"].to_numpy()))))
    if not corr_parts:
        empty = pl.DataFrame(schema=_CORR_SCHEMA | {f"{name}_p_adj": pl.Float64 for name in _FAMILIES})
        return _with_best(empty, _EMPTY_LAGS), _EMPTY_LAGS
    xcorr = pl.concat(lag_parts)
    return _with_best(pl.concat(corr_parts), xcorr), xcorr


_EMPTY_LAGS = pl.DataFrame(schema=_LAG_SCHEMA | {"p_adj": pl.Float64})


def _best(xcorr: pl.DataFrame, prefix: str, lag: str) -> pl.DataFrame:
    keys = ["run_id", "kind", "axis", "metric"]
    return (
        xcorr.drop_nulls("r")
        .filter(pl.col("r").is_not_nan())
        .sort([*keys, pl.col("r").abs(), pl.col("lag").abs()], descending=[False] * 4 + [True, False])
        .group_by(keys, maintain_order=True)
        .first()
        .select(*keys, pl.col("lag").alias(lag), pl.col("r").alias(f"{prefix}_r"),
                pl.col("p").alias(f"{prefix}_p"), pl.col("p_adj").alias(f"{prefix}_p_adj"))
    )


def _with_best(corr: pl.DataFrame, xcorr: pl.DataFrame) -> pl.DataFrame:
    """Add the best lag overall (``best_lag``, ``lag_*``) and the best lead, k >= 1 (``lead_k``, ``lead_*``)."""
    keys = ["run_id", "kind", "axis", "metric"]
    overall = _best(xcorr, "lag", "best_lag")
    leads = _best(xcorr.filter(pl.col("lag") >= 1), "lead", "lead_k")
    return corr.join(overall, on=keys, how="left").join(leads, on=keys, how="left")


def lead_lag(correlations: pl.DataFrame, run_id: str) -> list[dict]:
    """``summary.json``'s ``lead_lag``: one entry per axis × metric, most significant first."""
    rows = (
        correlations.filter((pl.col("run_id") == run_id) & pl.col("best_lag").is_not_null())
        .sort([pl.col("lag_p_adj"), pl.col("lag_r").abs()], descending=[False, True], nulls_last=True)
        .iter_rows(named=True)
    )
    return [
        {"metric": r["metric"], "axis": r["axis"], "best_lag": int(r["best_lag"]),
         "corr": _num(r["lag_r"]), "p_adj": _num(r["lag_p_adj"])}
        for r in rows
    ]


def _num(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)
