"""Which RL metric moves with, or before, each reward axis: correlation and lead/lag tables.

For every run, reward axis (its per-step ``mean``) and RL metric.

**Alignment.** Each series keeps its own logging cadence ``every`` (the median step between
its logged values: ``diag/*`` metrics are often logged every N > 1 steps). A pair is analysed
on the grid of its sparser series (the metric's, unless the axis is sparser): the denser one
is averaged over the steps nearest each grid point (centred blocks of ``every`` steps), so a
metric logged every 5 steps is compared with the axis averaged over the 5 steps around each of
its steps. Lags are multiples of the grid spacing and always reported in **steps** (``max_lag``
is rounded up to a whole number of grid steps). Steps align by number: a difference, residual
or lagged pair that touches a missing grid point is dropped.

**Aliases.** Metrics identical up to a positive scale and shift (to float32 precision) (``kl``, ``kl/value``,
``loss/kl = beta * kl``; ``loss``, ``loss/total``) have identical correlations: each group is
tested once, under one name (a core schema key if there is one, else the shortest name), and
the others are listed in its ``aliases`` column; they get no rows of their own.

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
  (below), with its p (``r0_p``, Bartlett variance) and BH across the run's pairs
  (``r0_p_adj``): the heat map's stars.

**Lead/lag: transfer-function identification** (Box, Jenkins, Reinsel & Ljung, *Time Series
Analysis*, 5th ed. 2015, ch. 12). Each series gets an AR(p) model (p <= 10 by AIC, least
squares with an intercept). The filter of the more persistent series of the pair (the larger
share of its variance at frequency zero, sigma_e^2 / (A(1)^2 var x)) is applied to **both**, and
``r(k) = corr(e_metric[t], e_axis[t + k])`` for k = -K..K: **k > 0 means the metric's changes
precede the axis's by k steps**. One filter for both keeps a same-step relation at k = 0;
separate filters (Haugh 1976) leak it into k = +1 or -1 whenever the two filters differ.

* **One test per pair**: the largest |r(k)|, its p from Student t with Bartlett's effective
  n, Sidak-corrected for the number of lags looked at. Then Benjamini-Hochberg across the
  tested pairs of a run (``pair_p_adj``): the first stage of Benjamini & Bogomolov's (2014)
  hierarchical FDR. Its second stage is the lag-level ``p_adj`` of ``xcorr``: BH over the lags
  of a selected pair, scaled by m / R (m tested pairs, R selected), null for pairs not selected.
* **Relation** (only for pairs whose unadjusted test passes with |r| >= ``MIN_R`` = 0.1):
  ``lead`` (peak at k > 0) or ``lag`` (k < 0) when |r(k)| is larger than both |r(-k)| and
  |r(0)| in at least 95% of bootstrap replicates; otherwise, unless the peak is larger than
  |r(0)| in 95% of replicates (no relation can be stated), ``same_step`` when r0 itself passes
  the Sidak test with |r0| >= ``MIN_R``. The bootstrap is a circular moving-block bootstrap
  (Kunsch 1989; Politis & Romano 1992) of the lagged products; it also gives a 95% percentile
  interval of the peak lag (``lag_ci_lo``, ``lag_ci_hi``, steps).
* ``pair_p`` is the Sidak p of the reported r (the peak for a lead or lag, r0 for same_step)
  and 1 for a tested pair that cannot be a finding (|r| < MIN_R, or no relation), so a
  **finding is exactly ``pair_p_adj < 0.05``** (``lag_p_adj`` equals it); raising a p-value to
  1 keeps it valid for BH. ``relation`` is ``none`` for every other pair.

How this departs from the methods it follows:

1. Box-Jenkins prewhiten the *input* of a known input -> output direction. Here the direction
   is what is asked, so the filter is the more persistent series' (over-differencing the other
   keeps it stationary; under-differencing would leave a spurious-regression trend), and both
   directions are read off the same r(k).
2. No ARIMA identification: AR(p) with p <= 10 by AIC, no MA terms, no separate differencing
   step (a unit root shows up as AR coefficients summing to about 1, i.e. differencing).
3. r(k) is reported, not the impulse-response weights v_k, and no transfer-function model is
   fitted or checked.
4. Box-Jenkins read r(k) against +-2/sqrt(n) bands lag by lag; here one Sidak-corrected
   max-|r| test per pair with Bartlett's variance (lags <= 10, factor >= 1). Sidak treats the
   lags as independent, which is conservative when the filtered series that is not white is
   autocorrelated.
5. Benjamini-Bogomolov select families by BH on any valid family p-value; the family p here
   is the Sidak p, raised to 1 where the pair cannot be a finding. The reported lag is the
   peak of |r(k)| (checked by the bootstrap), not the result of the lag-level tests.
6. The bootstrap resamples blocks of the lagged products x[t] * y[t + k] of the standardised
   filtered series, not the raw series, and does not re-fit the AR filter per replicate (it is
   conditional on the fitted filter). 400 replicates; blocks of max(2 T^(1/3), T / 400) steps,
   starting on bins of block // 8 steps (1 step below ~27,000 steps); r* uses the whole series'
   standardisation, and the difference between the observed r(k) and that approximation is
   added back to every replicate.
7. The lag interval is the percentile interval of the bootstrap argmax, a non-smooth statistic:
   it shows how far the peak moves in resamples (wide when other lags come close to the peak),
   with no guaranteed coverage.
8. Direction comes from comparing |r(k)| with |r(-k)| and |r(0)| by bootstrap percentiles, not
   from a Granger (1969) / Sims (1972) regression; the comparison ignores that k was chosen as
   the peak (the pair test has already rejected independence).
9. Sparse series are block-averaged onto the coarser grid (not in any of the references).

Caveats: p-values assume the filtered series are stationary, so they are optimistic when an
axis changes only in a short transient and is flat otherwise (look at the curves); and a
correlation is not a cause: a metric that leads an axis may share a driver with it.
``benchmarks/calibrate_leadlag.py`` measures false-finding rates, power and FDR on synthetic
runs with known truth (table in docs/analysis.md).
"""

from __future__ import annotations

import math
import re
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy.special import stdtr

__all__ = [
    "DEFAULT_MAX_LAG",
    "DEFAULT_EXCLUDE",
    "MIN_R",
    "pearson",
    "spearman",
    "lagged_xcorr",
    "ar_fit",
    "ar_residuals",
    "bh_adjust",
    "correlate",
    "lead_lag",
]

#: Largest lag looked at, in steps (for a metric logged every N steps: rounded up to a multiple of N).
DEFAULT_MAX_LAG = 25
#: Metrics that are aggregates of the axes themselves (``reward/mean``,
#: ``reward_mean/<axis>``, ``safety_reward_ema/<axis>``, ``safety_tag_ema/<tag>``):
#: correlating them with the axes tells nothing.
DEFAULT_EXCLUDE = r"reward|_ema/"
#: Nothing with a smaller |r| is called a finding, however small its p-value.
MIN_R = 0.1
ALPHA = 0.05
N_BOOT = 400
_MIN_PAIRS = 4
#: Fewest lagged pairs for an r(k), and fewest same-step pairs for a pair test.
_MIN_LAG_PAIRS = 10
_MIN_TEST_PAIRS = 20
#: Autocorrelation lags in Bartlett's variance.
_BARTLETT_LAGS = 10
#: A series whose value changes at fewer steps than this (and 1% of its steps)
#: is treated as constant: a few blips cannot carry a correlation.
MIN_CHANGES = 10
_RELATIONS = ("lead", "lag", "same_step")


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
    gram, cross, total = np.einsum("ti,tj->ij", lags, lags), np.einsum("ti,t->i", lags, y), _dot(y, y)
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


def _sidak(p: float, m: int) -> float:
    """P(min of m independent uniforms <= p)."""
    if not np.isfinite(p) or m < 1:
        return np.nan
    return float(-np.expm1(m * np.log1p(-min(p, 1.0)))) if p < 1 else 1.0


def _changes(v: np.ndarray) -> bool:
    d = np.diff(v)
    d = d[np.isfinite(d)]
    return int(np.count_nonzero(d)) >= max(MIN_CHANGES, 0.01 * len(d))


def _dense(frame: pl.DataFrame, key: str, value: str, lo: int, hi: int) -> dict[str, np.ndarray]:
    """Per ``key``, ``value`` on the steps lo..hi (NaN where not logged)."""
    out = {}
    for (name,), group in frame.group_by([key], maintain_order=True):
        arr = np.full(hi - lo + 1, np.nan)
        arr[group["step"].to_numpy() - lo] = group[value].to_numpy()
        out[name] = arr
    return out


# ----------------------------------------------------------------------------------------
# Series on a step grid


def _cadence(steps: np.ndarray) -> tuple[int, int]:
    """(every, phase): median step between logged values, and the commonest ``step % every``."""
    if len(steps) < 3:
        return 1, 0
    every = max(1, int(np.median(np.diff(steps))))
    if every == 1:
        return 1, 0
    return every, int(np.bincount(steps % every).argmax())


def _acf(x: np.ndarray, lags: int) -> np.ndarray:
    """Sample autocorrelations at lags 1..``lags`` (NaN-aware)."""
    mask = np.isfinite(x)
    out = np.zeros(lags)
    n = int(mask.sum())
    if n < 3:
        return out
    x0 = np.where(mask, x - x[mask].mean(), 0.0)
    var = _dot(x0, x0) / n
    if var <= 0:
        return out
    mf = mask.astype(float)
    for j in range(1, min(lags, len(x) - 1) + 1):
        cnt = _dot(mf[:-j], mf[j:])
        if cnt > 0:
            out[j - 1] = _dot(x0[:-j], x0[j:]) / cnt / var
    return out


def _bartlett(x: np.ndarray, y: np.ndarray) -> float:
    """Bartlett's variance factor for a correlation between independent autocorrelated series (>= 1)."""
    f = 1.0 + 2.0 * float(_acf(x, _BARTLETT_LAGS) @ _acf(y, _BARTLETT_LAGS))
    return max(f, 1.0)


@dataclass
class _Gridded:
    """One series on a (grid spacing, phase) grid: values at grid indices g0, g0 + 1, ..."""

    g0: int
    values: np.ndarray
    _cache: dict = field(default_factory=dict)

    @property
    def varies(self) -> bool:
        if "varies" not in self._cache:
            self._cache["varies"] = _changes(self.values)
        return self._cache["varies"]

    @property
    def coefs(self) -> np.ndarray:
        if "coefs" not in self._cache:
            self._cache["coefs"] = ar_fit(self.values)
        return self._cache["coefs"]

    @property
    def white(self) -> np.ndarray:
        if "white" not in self._cache:
            self._cache["white"] = ar_residuals(self.values, self.coefs)
        return self._cache["white"]

    @property
    def persistence(self) -> float:
        """Share of the variance at frequency zero: sigma_e^2 / (A(1)^2 var x); 1 for white noise."""
        if "persistence" not in self._cache:
            var_x, var_e = np.nanvar(self.values), np.nanvar(self.white)
            a1 = 1.0 - float(self.coefs.sum())
            if not (np.isfinite(var_x) and np.isfinite(var_e)) or var_x <= 0:
                value = 1.0
            elif a1 * a1 * var_x <= 1e-12 * var_e:
                value = np.inf
            else:
                value = var_e / (a1 * a1 * var_x)
            self._cache["persistence"] = value
        return self._cache["persistence"]

    def filtered(self, coefs: np.ndarray, own: bool) -> np.ndarray:
        return self.white if own else ar_residuals(self.values, coefs)

    @property
    def diff(self) -> np.ndarray:
        if "diff" not in self._cache:
            self._cache["diff"] = np.diff(self.values)
        return self._cache["diff"]

    def ranks(self, diff: bool = False) -> np.ndarray:
        """Average ranks of the finite values (or differences), in place; NaN elsewhere."""
        key = ("ranks", diff)
        if key not in self._cache:
            v = self.diff if diff else self.values
            out = np.full(len(v), np.nan)
            ok = np.isfinite(v)
            if ok.any():
                out[ok] = _ranks(v[ok])
            self._cache[key] = out
        return self._cache[key]


def _spearman_pair(mg: _Gridded, ag: _Gridded, m: np.ndarray, a: np.ndarray, diff: bool) -> float:
    """Spearman r of two aligned series; cached ranks when both are logged at the same grid points."""
    if mg.g0 == ag.g0 and len(m) == len(a) and np.array_equal(np.isfinite(m), np.isfinite(a)):
        return pearson(mg.ranks(diff), ag.ranks(diff))[0]
    return spearman(m, a)[0]


@dataclass
class _Series:
    steps: np.ndarray
    values: np.ndarray
    every: int
    phase: int
    grids: dict = field(default_factory=dict)

    @classmethod
    def of(cls, steps: np.ndarray, values: np.ndarray) -> _Series:
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order].astype(np.int64), values[order].astype(float)
        ok = np.isfinite(values)
        steps, values = steps[ok], values[ok]
        every, phase = _cadence(steps)
        return cls(steps, values, every, phase)

    def on(self, every: int, phase: int) -> _Gridded | None:
        key = (every, phase)
        if key not in self.grids:
            if len(self.steps) == 0:
                self.grids[key] = None
            else:
                g = (self.steps - phase + every // 2) // every  # nearest grid point (centred blocks)
                g0 = int(g[0])
                idx = g - g0
                counts = np.bincount(idx)
                sums = np.bincount(idx, weights=self.values)
                with np.errstate(invalid="ignore", divide="ignore"):
                    values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
                self.grids[key] = _Gridded(g0, values)
        return self.grids[key]

    @property
    def own(self) -> _Gridded | None:
        return self.on(self.every, self.phase)


def _align(a: _Gridded, b: _Gridded, xa: np.ndarray, xb: np.ndarray):
    """``xa`` (indexed from a.g0) and ``xb`` (from b.g0) on one shared index range."""
    lo = min(a.g0, b.g0)
    hi = max(a.g0 + len(xa), b.g0 + len(xb))
    if a.g0 == b.g0 and len(xa) == len(xb):
        return xa, xb
    out_a, out_b = np.full(hi - lo, np.nan), np.full(hi - lo, np.nan)
    out_a[a.g0 - lo : a.g0 - lo + len(xa)] = xa
    out_b[b.g0 - lo : b.g0 - lo + len(xb)] = xb
    return out_a, out_b


def _run(mask: np.ndarray) -> tuple[int, int] | None:
    """(first, last + 1) when the True entries of ``mask`` are one contiguous run, else None."""
    idx = np.flatnonzero(mask)
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        return int(idx[0]), int(idx[-1]) + 1
    return None


def _overlap(k: int, run_x: tuple[int, int], run_y: tuple[int, int]) -> tuple[int, int]:
    """The t with x[t] in run_x and y[t + k] in run_y, as [lo, hi) (empty: hi <= lo)."""
    return max(run_x[0], run_y[0] - k), min(run_x[1], run_y[1] - k)


def _profile(x: np.ndarray, y: np.ndarray, lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson ``r(k) = corr(x[t], y[t + k])`` and pair counts for k = -lags..lags (exact, NaN-aware).

    When each series' finite values form one run (the usual case: only the first p AR
    residuals are missing), counts and sums come from prefix sums and only the cross
    product is summed per lag.
    """
    mx, my = np.isfinite(x), np.isfinite(y)
    length = len(x)
    ks = np.arange(-lags, lags + 1)
    r = np.full(len(ks), np.nan)
    n = np.zeros(len(ks), dtype=np.int64)
    if mx.sum() < _MIN_PAIRS or my.sum() < _MIN_PAIRS:
        return r, n
    x0 = np.where(mx, x - x[mx].mean(), 0.0)
    y0 = np.where(my, y - y[my].mean(), 0.0)
    x2, y2 = x0 * x0, y0 * y0
    run_x, run_y = _run(mx), _run(my)
    if run_x is not None and run_y is not None:
        cx, cxx = np.concatenate([[0.0], np.cumsum(x0)]), np.concatenate([[0.0], np.cumsum(x2)])
        cy, cyy = np.concatenate([[0.0], np.cumsum(y0)]), np.concatenate([[0.0], np.cumsum(y2)])
    fx, fy = mx.astype(float), my.astype(float)
    for j, k in enumerate(ks):
        if abs(k) >= length:
            continue
        if run_x is not None and run_y is not None:
            lo, hi = _overlap(int(k), run_x, run_y)
            cnt = float(max(hi - lo, 0))
            n[j] = int(cnt)
            if cnt < _MIN_LAG_PAIRS:
                continue
            sx, sy = cx[hi] - cx[lo], cy[hi + k] - cy[lo + k]
            scale_x, scale_y = cxx[hi] - cxx[lo], cyy[hi + k] - cyy[lo + k]
            sxy = _dot(x0[lo:hi], y0[lo + k : hi + k])
        else:
            a, b = (slice(0, length - k), slice(k, length)) if k >= 0 else (slice(-k, length), slice(0, length + k))
            ma, mb = fx[a], fy[b]
            cnt = _dot(ma, mb)
            n[j] = int(cnt)
            if cnt < _MIN_LAG_PAIRS:
                continue
            sx, sy = _dot(x0[a], mb), _dot(ma, y0[b])
            scale_x, scale_y = _dot(x2[a], mb), _dot(ma, y2[b])
            sxy = _dot(x0[a], y0[b])
        vx = scale_x - sx * sx / cnt
        vy = scale_y - sy * sy / cnt
        cov = sxy - sx * sy / cnt
        if vx <= 1e-12 * scale_x or vy <= 1e-12 * scale_y or vx <= 0 or vy <= 0:
            continue
        r[j] = float(np.clip(cov / math.sqrt(vx * vy), -1.0, 1.0))
    return r, n


def _best_index(r: np.ndarray, ks: np.ndarray, where: np.ndarray | None = None) -> int | None:
    """Index of the largest |r| (ties: smaller |k|, then the negative k), or None."""
    ok = np.isfinite(r) if where is None else np.isfinite(r) & where
    if not ok.any():
        return None
    idx = np.flatnonzero(ok)
    order = np.lexsort((ks[idx], np.abs(ks[idx]), -np.abs(r[idx])))
    return int(idx[order[0]])


def _bootstrap(x: np.ndarray, y: np.ndarray, lags: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replicates of r(k), shape (N_BOOT, 2 lags + 1), by a circular moving-block bootstrap of the
    lagged products of the standardised series, and the observed r(k) in the same approximate form.

    Blocks are ``max(2 T^(1/3), T / 400)`` steps long. Products are summed into bins of
    ``block // 8`` steps first (1 for T < ~27,000), so blocks start on bin boundaries: this keeps
    a 60,000-step pair at a few tens of milliseconds.
    """
    mx, my = np.isfinite(x), np.isfinite(y)
    xs = np.where(mx, (x - x[mx].mean()) / (x[mx].std() or 1.0), 0.0)
    ys = np.where(my, (y - y[my].mean()) / (y[my].std() or 1.0), 0.0)
    run_x, run_y = _run(mx), _run(my)
    fx, fy = mx.astype(float), my.astype(float)
    length = len(x)
    cols = 2 * lags + 1
    block = int(min(length, max(math.ceil(2 * length ** (1 / 3)), math.ceil(length / 400))))
    width = max(1, block // 8)  # bin width (steps)
    bins = math.ceil(length / width)
    edges = np.arange(bins) * width
    prod = np.zeros((bins, cols))
    count = np.zeros((bins, cols))
    buf = np.zeros(bins * width)
    for j, k in enumerate(range(-lags, lags + 1)):
        if abs(k) >= length:
            continue
        lo, hi = (0, length - k) if k >= 0 else (-k, length)  # t with both x[t] and y[t + k] in range
        buf[:lo], buf[hi:] = 0.0, 0.0
        np.multiply(xs[lo:hi], ys[lo + k : hi + k], out=buf[lo:hi])
        prod[:, j] = buf.reshape(bins, width).sum(axis=1)
        if run_x is not None and run_y is not None:  # valid t form one run: count it per bin
            vlo, vhi = _overlap(k, run_x, run_y)
            count[:, j] = np.clip(np.minimum(vhi, edges + width) - np.maximum(vlo, edges), 0, None)
        else:
            np.multiply(fx[lo:hi], fy[lo + k : hi + k], out=buf[lo:hi])
            count[:, j] = buf.reshape(bins, width).sum(axis=1)
    span = max(1, math.ceil(block / width))  # block length in bins
    n_blocks = math.ceil(bins / span)

    def block_sums(m: np.ndarray) -> np.ndarray:  # (bins, cols): circular sums of `span` bins from each start
        wrapped = np.concatenate([m, m[: span - 1]], axis=0)
        cum = np.concatenate([np.zeros((1, cols)), np.cumsum(wrapped, axis=0)], axis=0)
        return cum[span : span + bins] - cum[:bins]

    sum_p, sum_c = block_sums(prod), block_sums(count)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, bins, size=(N_BOOT, n_blocks))
    num, den = np.zeros((N_BOOT, cols)), np.zeros((N_BOOT, cols))
    for i in range(n_blocks):  # sums of the picked blocks (no BLAS, no large temporaries)
        num += sum_p[picks[:, i]]
        den += sum_c[picks[:, i]]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.maximum(den, 1.0), np.nan)
        approx = prod.sum(axis=0) / np.maximum(count.sum(axis=0), 1.0)  # the observed statistic, same form
    return out, approx


# ----------------------------------------------------------------------------------------
# One run


@dataclass
class _Pair:
    kind: str
    axis: str
    metric: str
    every: int  # the metric's cadence
    grid: int  # the pair's grid spacing (steps)
    row: dict
    ks: np.ndarray | None = None
    r: np.ndarray | None = None
    n: np.ndarray | None = None
    p: np.ndarray | None = None
    x: np.ndarray | None = None
    y: np.ndarray | None = None


def _pair(kind: str, axis: str, metric: str, a_ser: _Series, m_ser: _Series, max_lag: int) -> _Pair:
    grid, phase = (m_ser.every, m_ser.phase) if m_ser.every >= a_ser.every else (a_ser.every, a_ser.phase)
    mg, ag = m_ser.on(grid, phase), a_ser.on(grid, phase)
    pair = _Pair(kind, axis, metric, m_ser.every, grid, {})
    row = pair.row
    if mg is None or ag is None:
        row["n"] = 0
        return pair
    m, a = _align(mg, ag, mg.values, ag.values)
    row["n"] = int((np.isfinite(m) & np.isfinite(a)).sum())
    if not (mg.varies and ag.varies):
        return pair
    both = np.isfinite(m) & np.isfinite(a)
    row["pearson_r"] = pearson(m, a)[0]
    row["spearman_r"] = _spearman_pair(mg, ag, m, a, diff=False)
    dm, da = _align(mg, ag, mg.diff, ag.diff)
    dr, _, dn = pearson(dm, da)
    dsr = _spearman_pair(mg, ag, dm, da, diff=True)
    factor = _bartlett(dm, da)
    row.update(diff_pearson_r=dr, diff_pearson_p=_t_pvalue(dr, dn / factor),
               diff_spearman_r=dsr, diff_spearman_p=_t_pvalue(dsr, dn / factor))
    if both.sum() < _MIN_TEST_PAIRS:
        return pair
    # one common filter: the more persistent series' AR filter, applied to both
    own_metric = mg.persistence >= ag.persistence
    coefs = mg.coefs if own_metric else ag.coefs
    x, y = _align(mg, ag, mg.filtered(coefs, own_metric), ag.filtered(coefs, not own_metric))
    lags = math.ceil(max_lag / grid) if max_lag > 0 else 0
    ks = np.arange(-lags, lags + 1)
    r, n = _profile(x, y, lags)
    factor = _bartlett(x, y)
    p = np.array([_t_pvalue(rk, nk / factor) for rk, nk in zip(r, n)])
    pair.ks, pair.r, pair.n, pair.p, pair.x, pair.y = ks, r, n, p, x, y
    return pair


def _classify(pair: _Pair) -> None:
    """Pair test, bootstrap (only when the unadjusted test passes) and the candidate relation.

    Sets ``pair_p``: the Sidak-corrected p of the r that would be reported (the peak for a
    lead or lag, r0 for a same-step relation), or 1 where the pair cannot be a finding
    (|r| < MIN_R, or no relation can be stated); NaN when the pair was not tested.
    """
    row, ks, r, p = pair.row, pair.ks, pair.r, pair.p
    row["relation"] = "none"
    if r is None or not np.isfinite(r).any():
        return
    m = int(np.isfinite(r).sum())
    zero = int(np.flatnonzero(ks == 0)[0])
    best = _best_index(r, ks)
    lead = _best_index(r, ks, ks >= 1)
    row.update(_peak=best, r0=r[zero], r0_p=p[zero], pair_p=1.0)
    if lead is not None:
        row.update(lead_k=int(ks[lead]) * pair.grid, lead_r=r[lead], lead_p=p[lead])
    p_max = _sidak(p[best], m)
    if not (p_max <= ALPHA and abs(r[best]) >= MIN_R):
        return
    seed = zlib.crc32(f"{pair.kind}\x00{pair.axis}\x00{pair.metric}".encode())
    boot, approx = _bootstrap(pair.x, pair.y, int(ks[-1]), seed)
    shift = np.where(np.isfinite(r), r, 0.0) - np.where(np.isfinite(approx), approx, 0.0)
    boot = boot + shift  # centre the replicates on the exact r(k)
    peak = np.argmax(np.where(np.isfinite(boot), np.abs(boot), -1.0), axis=1)
    lo, hi = np.quantile(ks[peak], [0.025, 0.975], method="inverted_cdf")
    row.update(lag_ci_lo=int(lo) * pair.grid, lag_ci_hi=int(hi) * pair.grid)
    k = int(ks[best])
    sign = np.sign(r[best])
    if k != 0:
        mirror = int(np.flatnonzero(ks == -k)[0])
        stronger_than_0 = sign * boot[:, best] - np.abs(boot[:, zero])
        stronger = sign * boot[:, best] - np.maximum(np.abs(boot[:, mirror]), np.abs(boot[:, zero]))
        if np.nanquantile(stronger, ALPHA) > 0:
            row.update(relation="lead" if k > 0 else "lag", pair_p=p_max, _report=best)
            return
        if np.nanquantile(stronger_than_0, ALPHA) > 0:
            return  # stronger away from lag 0, but in both directions alike: no relation to state
    p0 = _sidak(p[zero], m)
    if abs(r[zero]) >= MIN_R and p0 <= ALPHA:
        row.update(relation="same_step", pair_p=p0, _report=zero)


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


def _aliases(series: dict[str, _Series]) -> dict[str, list[str]]:
    """Representative name -> the other names of series identical up to a positive scale and shift."""
    from rg_tracer.schema import RL_KEYS

    groups: dict[tuple, list[str]] = {}
    for name, s in series.items():
        if len(s.values) < 2 or _flat(s.values):
            continue
        groups.setdefault((len(s.steps), s.steps.tobytes()), []).append(name)
    out: dict[str, list[str]] = {}
    for names in groups.values():
        if len(names) < 2:
            continue
        z = {}
        for name in names:
            v = series[name].values
            z[name] = (v - v.mean()) / v.std()
        left = sorted(names, key=lambda nm: (nm not in RL_KEYS, len(nm), nm))
        while left:
            rep, rest = left[0], left[1:]
            # z-scores agree to float32 precision: a metric logged as a scaled copy (loss/kl = kl_coef * kl)
            same = [nm for nm in rest if np.allclose(z[rep], z[nm], rtol=0, atol=1e-6)]
            if same:
                out[rep] = same
            left = [nm for nm in rest if nm not in same]
    return out


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
