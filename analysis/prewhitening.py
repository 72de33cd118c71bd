"""The AR prewhitening filter, and Bartlett's variance of a correlation of autocorrelated series.

Each series gets an AR(p) model (p <= 10 by AIC, least squares with an intercept); its
residuals are the prewhitened series (:mod:`analysis.lead_lag_test` applies one filter, the
more persistent series', to both series of a pair). A correlation between two autocorrelated
series has Bartlett's (1935) variance: effective n = n / (1 + 2 sum_j rho_x(j) rho_y(j)),
j = 1..10, factor clipped at >= 1 (Pyper & Peterman 1998). The step grid
(:mod:`analysis.step_series`) and the lead/lag test both use these.

How this departs from Box-Jenkins (Box, Jenkins, Reinsel & Ljung, *Time Series Analysis*, 5th
ed. 2015, ch. 12): no ARIMA identification: AR(p) with p <= 10 by AIC, no MA terms, no
separate differencing step (a unit root shows up as AR coefficients summing to about 1, i.e.
differencing).
"""

from __future__ import annotations

import numpy as np

from analysis.correlation_stats import _dot

__all__ = ["ar_fit", "ar_residuals"]

#: Autocorrelation lags in Bartlett's variance.
_BARTLETT_LAGS = 10


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
