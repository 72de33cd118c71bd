"""Correlation building blocks: r with its p-value, lagged r, and multiple-testing adjustment.

Pearson and Spearman r with Student t p-values (as ``scipy.stats`` gives them), the plain
lagged cross-correlation ``r(k)``, Benjamini-Hochberg adjusted p-values and the Sidak
correction. The step grid (:mod:`analysis.step_series`), the prewhitening filter
(:mod:`analysis.prewhitening`), the lead/lag test (:mod:`analysis.lead_lag_test`) and the
tables (:mod:`analysis.correlations`) all build on these, so they live apart from each of them.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.special import stdtr

__all__ = ["pearson", "spearman", "lagged_xcorr", "bh_adjust"]

_MIN_PAIRS = 4


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product without BLAS: multithreaded BLAS on many short products stalls on a busy machine."""
    return float(np.einsum("i,i->", a, b))


def _flat(v: np.ndarray) -> bool:
    """Constant up to rounding (a filtered constant is not exactly constant)."""
    return bool(np.ptp(v) <= 1e-9 * np.abs(v).max())


def _t_pvalue(r: float, n: float) -> float:
    """Two-sided Student t p-value of a correlation ``r`` over ``n`` (possibly effective) pairs."""
    if not np.isfinite(r) or n <= 2:
        return np.nan
    if abs(r) >= 1.0:
        return 0.0
    t = r * np.sqrt((n - 2) / (1 - r * r))
    return float(2 * stdtr(n - 2, -abs(t)))


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """Pearson r, two-sided p and n over pairs where both are finite (p as ``scipy.stats.pearsonr``)."""
    mask = np.isfinite(x) & np.isfinite(y)
    n = int(mask.sum())
    if n < _MIN_PAIRS or _flat(x[mask]) or _flat(y[mask]):
        return np.nan, np.nan, n
    xs, ys = x[mask] - x[mask].mean(), y[mask] - y[mask].mean()
    denom = np.sqrt((xs * xs).sum() * (ys * ys).sum())
    if denom == 0 or not np.isfinite(denom):
        return np.nan, np.nan, n
    r = float(np.clip((xs * ys).sum() / denom, -1.0, 1.0))
    return r, _t_pvalue(r, n), n


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman rho and p: Pearson on average ranks, t-distributed p (as scipy.stats.spearmanr)."""
    mask = np.isfinite(x) & np.isfinite(y)
    if mask.sum() < _MIN_PAIRS:
        return np.nan, np.nan
    r, p, _ = pearson(_ranks(x[mask]), _ranks(y[mask]))
    return r, p


def _ranks(v: np.ndarray) -> np.ndarray:
    return pl.Series(v).rank("average").to_numpy().astype(float)


def lagged_xcorr(metric: np.ndarray, axis: np.ndarray, max_lag: int) -> pl.DataFrame:
    """``r(k) = corr(metric[t], axis[t + k])`` for k in -max_lag..max_lag (NaN = gap), plain t p-values."""
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


def _sidak(p: float, m: int) -> float:
    """P(min of m independent uniforms <= p)."""
    if not np.isfinite(p) or m < 1:
        return np.nan
    return float(-np.expm1(m * np.log1p(-min(p, 1.0)))) if p < 1 else 1.0
