"""r(k) of two prewhitened series for every lag k: exactly, and by a block bootstrap.

:func:`_profile` gives the exact NaN-aware Pearson ``r(k) = corr(x[t], y[t + k])`` for
k = -K..K; :func:`_bootstrap` gives replicates of it by a circular moving-block bootstrap
(Kunsch 1989; Politis & Romano 1992) of the lagged products, from which
:mod:`analysis.lead_lag_test` takes a pair's relation and the 95% interval of its lag. Both
are the per-pair hot loop of :func:`analysis.correlations.correlate`, written for speed.

How the bootstrap departs from the references: it resamples blocks of the lagged products
x[t] * y[t + k] of the standardised filtered series, not the raw series, and does not re-fit
the AR filter per replicate (it is conditional on the fitted filter). 400 replicates; blocks
of max(2 T^(1/3), T / 400) steps, starting on bins of block // 8 steps (1 step below ~27,000
steps); r* uses the whole series' standardisation, and the difference between the observed
r(k) and that approximation is added back to every replicate (by the caller).
"""

from __future__ import annotations

import math

import numpy as np

from analysis.correlation_stats import _MIN_PAIRS, _dot

N_BOOT = 400
#: Fewest lagged pairs for an r(k).
_MIN_LAG_PAIRS = 10


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
