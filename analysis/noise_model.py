"""The noise of a reward axis's step means: white sampling noise, drift and wobble.

:mod:`analysis.transitions` judges every change against this model, so that
a series that only drifts or wobbles is not cut into stairs.

Model (after DeCAFS, Romano, Rigaill, Runge & Fearnhead 2022, JASA):
``y_t = mu_t + x_t + w_t + e_t`` with ``e_t`` white (variance ``s``), ``w_t``
a random walk (variance ``q`` per step) and ``x_t`` a stationary AR(1)
(variance ``a``, coefficient ``phi``), whose variogram is
``V(k) = Var(y_{t+k} - y_t) = 2s + kq + 2a(1 - phi^k)``.

Departures from DeCAFS:

1. The parameters are fitted by non-negative least squares (on a grid of
   ``phi``) to robust variogram estimates (variance trimmed at 3.5 robust SDs)
   at lags 1..8 and geometric lags up to n/8, not by DeCAFS's estimator.
2. ``s`` is the logged sampling variance ``std^2 / n`` when the log has it
   (the noise is then scaled step by step with the smoothed sampling
   variance); drift and wobble are fitted only when the variogram exceeds,
   beyond its 95% bound under white noise (simulated), what ``s`` gives.
3. ``phi`` is capped so that the AR(1) decorrelates within the fitted lags:
   a slower one is read as drift, which keeps growing beyond them (the
   conservative reading for long scan windows).
4. Differences that span a change found so far are left out of the fit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = ["NoiseModel", "fit_noise", "mosum_var", "is_binary", "sampling_variance"]

_PHIS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
#: variance of a standard normal truncated to +-3.5
_TRUNCATED_VAR = 1 - 7 * math.exp(-3.5**2 / 2) / math.sqrt(2 * math.pi) / math.erf(3.5 / math.sqrt(2))


@dataclass(frozen=True)
class NoiseModel:
    """Variances per step of the fitted noise: white ``s``, drift ``q``, AR(1) ``a`` with ``phi``."""

    s: float
    q: float
    a: float
    phi: float

    def variogram(self, k: np.ndarray) -> np.ndarray:
        k = np.asarray(k, dtype=float)
        v = 2 * self.s + k * self.q + 2 * self.a * (1 - self.phi**k)
        return np.where(k == 0, 0.0, v)

    @property
    def sd(self) -> float:
        """Step-to-step noise SD: the unit of ``Transition.size``."""
        return math.sqrt(self.s + self.a + self.q)

    @property
    def long_run_var(self) -> float:
        """Bai's sigma^2: the long-run variance of the white and AR(1) parts, plus one step of drift
        (a random walk has no finite long-run variance)."""
        return self.s + self.a * (1 + self.phi) / max(1 - self.phi, 1e-3) + self.q


def _robust_var(d: np.ndarray) -> float:
    """Mean square of the differences ``d`` (about 0: a trend is variance too), values beyond 3.5
    robust SDs left out (and corrected for).

    More efficient than the squared MAD (the threshold depends on this), and
    as indifferent to the few differences that straddle a change.
    """
    d = d[np.isfinite(d)]
    if len(d) < 4:
        return math.nan
    mad = 1.4826 * float(np.median(np.abs(d)))
    if mad == 0:  # mostly exactly equal steps: fall back on the spread of the rest
        return float(np.var(d))
    kept = d[np.abs(d) <= 3.5 * mad]
    return float(np.mean(kept**2)) / _TRUNCATED_VAR


def fit_noise(y: np.ndarray, exclude: Sequence[tuple[int, int]] = (), white: float | None = None,
              scale: np.ndarray | None = None) -> NoiseModel:
    """Fit ``V(k) = 2s + kq + 2a(1 - phi^k)`` to robust lag-k difference variances.

    ``exclude``: index ranges ``[start, stop)`` of (suspected) changes; a
    difference ``y[t+k] - y[t]`` that spans one is left out, so that a change
    does not pass for drift. ``white``: the white-noise variance when it is
    known (the logged sampling variance), else it is fitted too. ``scale``:
    each step's relative noise variance (median 1); the model is fitted to
    differences divided by it, i.e. every noise component scales with it.
    With ``white`` known, drift and wobble are fitted only when the variogram
    exceeds what that white noise gives (its 95% bound, by simulation):
    otherwise their estimates are noise that would only blunt the scan.
    """
    from scipy.optimize import nnls

    lags = _lags(len(y))
    v = _variogram(y, lags, exclude, scale)
    if white is not None and _excess(v, lags, white) <= _excess_bound(len(y)):
        return NoiseModel(white, 0.0, 0.0, 0.0)  # nothing beyond the sampling noise to model
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() == 0:
        return NoiseModel(0.0, 0.0, 0.0, 0.0)
    lags, v = lags[ok], v[ok]
    w = 1.0 / (v * np.sqrt(lags))  # 1 / SE of each estimate: relative error grows as sqrt(k / n)
    best, best_err = NoiseModel(float(v[0]) / 2, 0.0, 0.0, 0.0), math.inf
    target = v if white is None else v - 2 * white
    # an AR(1) slower than the lags can show is indistinguishable from drift there, but would stop
    # growing beyond them; drift keeps growing, the conservative reading for the scan's long windows
    for phi in [p for p in _PHIS if p <= 1 - 3 / lags[-1]] or [0.0]:
        cols = np.column_stack([np.full(len(lags), 2.0), lags.astype(float), 2 * (1 - phi**lags)])
        if white is not None:
            cols = cols[:, 1:]
        coef, _ = nnls(cols * w[:, None], target * w)
        err = float(np.sum(((cols @ coef - target) * w) ** 2))
        if white is not None:
            coef = np.concatenate([[white], coef])
        if err < best_err - 1e-12:
            best, best_err = NoiseModel(float(coef[0]), float(coef[1]), float(coef[2]), phi), err
    return best


def _lags(n: int) -> np.ndarray:
    """Lags 1..8, then geometric to n/8: drift matters at the scan's long windows, and is measured there."""
    lags = np.unique(np.concatenate([np.arange(1, 9), np.geomspace(8, max(8, n // 8), 10).astype(int)]))
    return lags[lags <= max(2, n // 8)]


def _variogram(y: np.ndarray, lags: np.ndarray, exclude: Sequence[tuple[int, int]] = (),
               scale: np.ndarray | None = None) -> np.ndarray:
    """Robust ``Var(y[t+k] - y[t])`` per lag (see :func:`fit_noise`)."""
    v = np.empty(len(lags))
    for i, k in enumerate(lags):
        d = y[k:] - y[:-k]
        if scale is not None:
            d = d / np.sqrt((scale[k:] + scale[:-k]) / 2)
        keep = np.ones(len(d), dtype=bool)
        for start, stop in exclude:  # d[t] spans [t, t + k]: drop it when that meets [start - 1, stop]
            keep[max(0, start - k):max(0, stop)] = False
        v[i] = _robust_var(d[keep])
    return v


def _excess(v: np.ndarray, lags: np.ndarray, white: float) -> float:
    """Mean over lags >= 4 of the variogram over what white noise of variance ``white`` gives."""
    far = (lags >= 4) & np.isfinite(v)
    return float(np.mean(v[far] / (2 * white))) if far.any() else 1.0


@functools.lru_cache(maxsize=64)
def _excess_bound(n: int, sims: int = 400) -> float:
    """95% quantile of :func:`_excess` on white noise of known variance and length n (Monte Carlo)."""
    rng = np.random.default_rng(1)
    lags = _lags(n)
    return float(np.quantile([_excess(_variogram(rng.standard_normal(n), lags), lags, 1.0)
                              for _ in range(sims)], 0.95))


def mosum_var(noise: NoiseModel, h: int) -> float:
    """Variance of the after-minus-before mean difference over h steps (from the variogram:
    ``Var(sum a_i y_i) = -1/2 sum_ij a_i a_j V(|i - j|)`` for weights summing to 0)."""
    a = np.concatenate([np.full(h, -1.0 / h), np.full(h, 1.0 / h)])
    idx = np.arange(2 * h)
    vario = noise.variogram(np.abs(idx[:, None] - idx[None, :]))
    return max(float(-0.5 * a @ vario @ a), 1e-300)


def is_binary(mean: np.ndarray, std: np.ndarray | None, n: np.ndarray | None) -> bool:
    """Every step's std is that of 0/1 samples with this mean."""
    if std is None or n is None:
        return False
    ok = np.isfinite(std) & (n >= 2)
    if ok.sum() < 0.5 * len(mean) or np.any((mean < 0) | (mean > 1)):
        return False
    m, k = mean[ok], n[ok]
    expect = m * (1 - m) * k / (k - 1)
    return bool(np.allclose(std[ok] ** 2, expect, rtol=1e-6, atol=1e-9))


def sampling_variance(std: np.ndarray | None, n: np.ndarray | None, binary: bool,
                      size: int) -> tuple[float | None, np.ndarray | None]:
    """(typical sampling variance of a step mean, its relative size per step, smoothed); None when not logged.

    On the Anscombe scale a binary step of n samples has variance 1 / (4n + 2).
    """
    if n is None:
        return None, None
    if binary:
        var = 1.0 / (4 * np.maximum(n, 1) + 2)
    elif std is None:
        return None, None
    else:
        var = np.where((n >= 2) & np.isfinite(std), std**2 / np.maximum(n, 1), np.nan)
        if np.isfinite(var).sum() < 0.5 * len(var):
            return None, None
        var = pl.Series(var).fill_nan(None).rolling_mean(size, min_samples=1, center=True)
        var = var.fill_null(strategy="forward").fill_null(strategy="backward").to_numpy()
    typical = float(np.median(var))
    if not typical > 0:
        return None, None
    return typical, np.maximum(var / typical, 0.2)
