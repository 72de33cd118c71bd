"""The multiscale MOSUM scan for level changes, and its simulated family-wise threshold.

Steps 3 and 4 of the method of :mod:`analysis.transitions`:

* **Scan** (multiscale MOSUM: Eichinger & Kirch 2018, Bernoulli; Cho & Kirch
  2022): at widths ``h = min_size * 2^j <= n/4`` the difference of the means
  of the ``h`` steps after and before each step, divided by its exact
  standard deviation *under the fitted noise model*. Drift and wobble
  therefore widen the threshold instead of being cut into stairs.
* **Test.** The threshold is the ``1 - alpha`` quantile of the scan's
  maximum over every position and width for white noise of the same length
  (Monte Carlo, 2,000 series, fixed seed; conservative for smoother noise,
  which has fewer independent positions); ``p_value`` is that family-wise
  p-value (Bonferroni beyond the simulated range).

Departures from the papers: DeCAFS's penalised dynamic programme is replaced
by the MOSUM scan under DeCAFS's noise model (the scan is O(n) per width and
its threshold explicit); the MOSUM asymptotic critical value is replaced by a
simulated one (the asymptotics are poor for n/h < 50).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from analysis.noise_model import NoiseModel, mosum_var


def _window_means(c: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """For t = h..n-h: mean of [t-h, t) and of [t, t+h) (``c`` = cumsum with a leading 0)."""
    n = len(c) - 1
    t = np.arange(h, n - h + 1)
    return (c[t] - c[t - h]) / h, (c[t + h] - c[t]) / h


def _candidates(z: np.ndarray, noise: NoiseModel, weights: np.ndarray | None, min_size: int,
                alpha: float, seed: bool = False) -> tuple[list[tuple[int, int, float]], np.ndarray, float]:
    """(position, bandwidth, T) of local scan maxima over the threshold; the null maxima; the test count.

    ``seed``: with none over it, the largest scale's maximum anyway (a trial change).
    """
    n = len(z)
    scales = []
    h = min_size
    while h <= max(min_size, n // 4):
        scales.append(h)
        h *= 2
    scales = [h for h in scales if 2 * h <= n]
    tests = sum(n - 2 * h + 1 for h in scales)
    null = _null_maxima(n, tuple(scales))
    crit = float(np.quantile(null, 1 - alpha)) if len(null) else math.inf
    c = np.concatenate([[0.0], np.cumsum(z)])
    cw = None if weights is None else np.concatenate([[0.0], np.cumsum(weights)])
    found = []
    for h in scales:
        left, right = _window_means(c, h)  # (n - 2h + 1,) each
        total = mosum_var(noise, h)
        var = np.full(len(left), total)
        if cw is not None:  # the noise follows the local sampling variance
            t = np.arange(h, n - h + 1)
            var = total * (cw[t + h] - cw[t - h]) / (2 * h)
        stat = (right - left) / np.sqrt(var)
        last = (stat, h)
        over = np.abs(stat) > crit
        if not over.any():
            continue
        # one candidate per run of exceedances of one sign: its maximum
        sign = np.sign(stat) * over
        edges = np.flatnonzero(np.diff(np.concatenate([[0], sign, [0]])) != 0)
        for start, stop in zip(edges[:-1], edges[1:]):
            if sign[start] == 0:
                continue
            k = start + int(np.argmax(np.abs(stat[start:stop])))
            found.append((k + h, h, float(stat[k])))
    if seed and not found and scales:
        stat, h = last
        k = int(np.argmax(np.abs(stat)))
        found.append((k + h, h, float(stat[k])))
    return found, null, tests


NULL_SIMULATIONS = 2000


@functools.lru_cache(maxsize=64)
def _null_maxima(n: int, scales: tuple[int, ...]) -> np.ndarray:
    """Sorted max over positions and scales of |T| for white noise of length n (Monte Carlo, fixed seed).

    The exact family-wise threshold of the scan where the noise is white; for smoother noise
    (drift, wobble) it is conservative, as that scan has fewer effectively independent positions.
    """
    if not scales:
        return np.zeros(0)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(NULL_SIMULATIONS // 250):
        x = rng.standard_normal((250, n))
        c = np.concatenate([np.zeros((250, 1)), np.cumsum(x, axis=1)], axis=1)
        best = np.zeros(250)
        for h in scales:
            t = np.arange(h, n - h + 1)
            stat = ((c[:, t + h] - c[:, t]) - (c[:, t] - c[:, t - h])) / np.sqrt(2 * h)
            best = np.maximum(best, np.abs(stat).max(axis=1))
        out.append(best)
    return np.sort(np.concatenate(out))


def _p_value(null: np.ndarray, stat: float, tests: float) -> float:
    """Family-wise p of a scan maximum: Monte Carlo where it resolves it, Bonferroni beyond."""
    from scipy.stats import norm

    bonferroni = min(1.0, float(2 * tests * norm.sf(abs(stat))))
    if len(null) == 0 or abs(stat) > null[-1]:
        return bonferroni
    return min(bonferroni, (len(null) - np.searchsorted(null, abs(stat)) + 1) / (len(null) + 1))
