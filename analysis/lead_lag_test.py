"""Lead/lag of one axis x metric pair: one common prewhitening filter, one test, one relation.

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
  (Both BH stages run over a whole run, in :mod:`analysis.correlations`.)
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

How this departs from the methods it follows (for the AR filter, the bootstrap and the step
grid, see :mod:`analysis.prewhitening`, :mod:`analysis.lag_profile` and
:mod:`analysis.step_series`):

1. Box-Jenkins prewhiten the *input* of a known input -> output direction. Here the direction
   is what is asked, so the filter is the more persistent series' (over-differencing the other
   keeps it stationary; under-differencing would leave a spurious-regression trend), and both
   directions are read off the same r(k).
2. r(k) is reported, not the impulse-response weights v_k, and no transfer-function model is
   fitted or checked.
3. Box-Jenkins read r(k) against +-2/sqrt(n) bands lag by lag; here one Sidak-corrected
   max-|r| test per pair with Bartlett's variance (lags <= 10, factor >= 1). Sidak treats the
   lags as independent, which is conservative when the filtered series that is not white is
   autocorrelated.
4. Benjamini-Bogomolov select families by BH on any valid family p-value; the family p here
   is the Sidak p, raised to 1 where the pair cannot be a finding. The reported lag is the
   peak of |r(k)| (checked by the bootstrap), not the result of the lag-level tests.
5. The lag interval is the percentile interval of the bootstrap argmax, a non-smooth statistic:
   it shows how far the peak moves in resamples (wide when other lags come close to the peak),
   with no guaranteed coverage.
6. Direction comes from comparing |r(k)| with |r(-k)| and |r(0)| by bootstrap percentiles, not
   from a Granger (1969) / Sims (1972) regression; the comparison ignores that k was chosen as
   the peak (the pair test has already rejected independence).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from analysis.correlation_stats import _sidak, _t_pvalue, pearson
from analysis.lag_profile import _bootstrap, _profile
from analysis.prewhitening import _bartlett
from analysis.step_series import GAP_MARGIN, _align, _Series, _spearman_pair, _Squeeze

__all__ = ["MIN_R"]

#: Nothing with a smaller |r| is called a finding, however small its p-value.
MIN_R = 0.1
ALPHA = 0.05
#: Fewest same-step pairs for a pair test.
_MIN_TEST_PAIRS = 20


def _best_index(r: np.ndarray, ks: np.ndarray, where: np.ndarray | None = None) -> int | None:
    """Index of the largest |r| (ties: smaller |k|, then the negative k), or None."""
    ok = np.isfinite(r) if where is None else np.isfinite(r) & where
    if not ok.any():
        return None
    idx = np.flatnonzero(ok)
    order = np.lexsort((ks[idx], np.abs(ks[idx]), -np.abs(r[idx])))
    return int(idx[order[0]])


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
    lags = math.ceil(max_lag / grid) if max_lag > 0 else 0
    squeeze = _Squeeze()
    if len(m_ser.steps) and len(a_ser.steps):  # long gaps cut: cost follows logged steps (step_series)
        squeeze = _Squeeze.of([m_ser.grid(grid, phase), a_ser.grid(grid, phase)], lags + GAP_MARGIN)
    mg, ag = m_ser.on(grid, phase, squeeze), a_ser.on(grid, phase, squeeze)
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
