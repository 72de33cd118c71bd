"""Where a change happened and what shape it has: a jump or a phase, by a flat-ramp-flat fit.

Step 5 of the method of :mod:`analysis.transitions`, on the candidates of
:mod:`analysis.mosum_scan`:

**Shape and place.** Same-direction detections whose windows overlap are
one change. Over its window a flat-ramp-flat curve is fitted by least
squares for every (start, end): the change is a **jump** when a ramp of
length zero is inside the 95% profile-likelihood set (chi-square(2) with
the long-run noise variance), otherwise a **phase** with ``onset_step`` and
``end_step`` at 10% and 90% of the best ramp. The 95% interval of where it
happened (``onset_lo``, ``end_hi``) is Bai's (1994) ``+-11.03 sigma^2 /
delta^2`` for a jump (applied on the raw steps by :mod:`analysis.transitions`),
the extremes of the 10%/90% points over the profile set for a phase.

Departure from the papers: Cho & Kirch's bottom-up merge across widths is
replaced by merging overlapping windows and a ramp fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.mosum_scan import _candidates, _p_value
from analysis.noise_model import NoiseModel

_CHI2_2_95 = 5.991


def _ramp_fit(y: np.ndarray, lo: int, hi: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SSE of flat-ramp-flat fits to ``y[lo:hi]`` for ramps [a, b], a <= b (a == b: a jump at a).

    On a grid of the given stride, then every step around the best fit.
    Returns (a, b, sse), indices relative to ``lo``.
    """
    n = hi - lo
    grid = np.arange(1, n, stride)
    a, b = np.meshgrid(grid, np.append(grid, n - 1), indexing="ij")
    keep = a <= b
    a, b, sse = _ramp_sse(y[lo:hi], a[keep], b[keep])
    if stride > 1:
        j = int(np.argmin(sse))
        near_a = np.arange(max(1, a[j] - stride), min(n - 1, a[j] + stride) + 1)
        near_b = np.arange(max(1, b[j] - stride), min(n - 1, b[j] + stride) + 1)
        fa, fb = np.meshgrid(near_a, near_b, indexing="ij")
        keep = fa <= fb
        fa, fb, fsse = _ramp_sse(y[lo:hi], fa[keep], fb[keep])
        a, b, sse = np.concatenate([a, fa]), np.concatenate([b, fb]), np.concatenate([sse, fsse])
    return a, b, sse


def _ramp_sse(seg: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, SSE of the flat-ramp-flat fit with ramp [a, b]) for each pair, by cumulative sums."""
    n = len(seg)
    t = np.arange(n, dtype=float)
    cums = [np.concatenate([[0.0], np.cumsum(v)]) for v in (np.ones(n), t, t * t, seg, t * seg)]
    c1, ct, ctt, cy, cty = cums
    w = (b - a).astype(float)
    ramp = w > 0
    ws = np.where(ramp, w, 1.0)
    # the ramp: t in [a, b), r = (t - a) / w; after it (t >= b, or t >= a for a jump) r = 1
    s1 = ct[b] - ct[a] - a * (c1[b] - c1[a])
    s2 = ctt[b] - ctt[a] - 2 * a * (ct[b] - ct[a]) + a * a * (c1[b] - c1[a])
    sy = cty[b] - cty[a] - a * (cy[b] - cy[a])
    after = c1[n] - c1[b]
    sr = np.where(ramp, s1 / ws, 0) + after
    srr = np.where(ramp, s2 / ws**2, 0) + after
    sry = np.where(ramp, sy / ws, 0) + cy[n] - cy[b]
    syy = float(np.sum((seg - seg.mean()) ** 2))
    var_r = srr - sr * sr / n
    cov = sry - sr * cy[n] / n
    sse = syy - np.where(var_r > 1e-12, cov * cov / np.where(var_r > 1e-12, var_r, 1), 0)
    return a, b, sse


def _levels(y: np.ndarray, lo: int, hi: int, a: int, b: int) -> tuple[float, float]:
    """Least-squares levels before and after a ramp [a, b] (relative to ``lo``) of ``y[lo:hi]``."""
    seg = y[lo:hi]
    t = np.arange(len(seg), dtype=float)
    r = np.clip((t - a) / (b - a), 0, 1) if b > a else (t >= a).astype(float)
    design = np.column_stack([1 - r, r])
    coef, *_ = np.linalg.lstsq(design, seg, rcond=None)
    return float(coef[0]), float(coef[1])


def _refine(y: np.ndarray, lo: int, cut: int, hi: int, radius: int) -> int:
    """Best single split of ``y[lo:hi]`` within ``radius`` of ``cut`` (least squares)."""
    seg = y[lo:hi]
    c1, c2 = np.cumsum(seg), np.cumsum(seg * seg)
    n = len(seg)
    ks = np.arange(max(1, cut - lo - radius), min(n - 1, cut - lo + radius) + 1)
    if len(ks) == 0:
        return cut
    left = c2[ks - 1] - c1[ks - 1] ** 2 / ks
    right = (c2[-1] - c2[ks - 1]) - (c1[-1] - c1[ks - 1]) ** 2 / (n - ks)
    return lo + int(ks[np.argmin(left + right)])


def _groups(found: list[tuple[int, int, float]]) -> list[list[tuple[int, int, float]]]:
    """Same-sign candidates whose windows overlap: one change each."""
    groups: list[list[tuple[int, int, float]]] = []
    for cand in sorted(found):
        pos, h, stat = cand
        if groups:
            last = groups[-1]
            reach = max(p + hh for p, hh, _ in last)
            if np.sign(last[0][2]) == np.sign(stat) and pos - h <= reach:
                last.append(cand)
                continue
        groups.append([cand])
    return groups


@dataclass(frozen=True)
class _Change:
    """A change on the scanned (maybe binned) series: window [lo, hi), best ramp [lo+a, lo+b]."""

    lo: int
    hi: int
    a: int
    b: int
    delta: float
    stat: float
    p_value: float
    jump: bool
    span: tuple[float, float]  # 95% interval of the 10% and 90% points
    local: float = 1.0  # the noise variance in the window, relative to the typical step

    def profile(self, length: int) -> np.ndarray:
        t = np.arange(length, dtype=float) - self.lo
        if self.b > self.a:
            return np.clip((t - self.a) / (self.b - self.a), 0, 1)
        return (t >= self.a).astype(float)


def _locate(z: np.ndarray, noise: NoiseModel, weights: np.ndarray | None, min_size: int,
            alpha: float, seed: bool = False, binned: bool = False) -> list[_Change]:
    """The changes on ``z``; ``binned``: a jump inside a bin looks like a one-bin ramp."""

    found, null, tests = _candidates(z, noise, weights, min_size, alpha, seed)
    groups = _groups(found)
    centres = [int(np.median([p for p, _, _ in g])) for g in groups]
    sigma2 = noise.long_run_var
    out = []
    for i, g in enumerate(groups):
        lo = max(min(p - h for p, h, _ in g), centres[i - 1] if i else 0)
        hi = min(max(p + h for p, h, _ in g), centres[i + 1] if i + 1 < len(groups) else len(z))
        stat = max((c[2] for c in g), key=abs)
        if hi - lo < 4:
            continue
        stride = max(1, (hi - lo) // 300)
        a, b, sse = _ramp_fit(z, lo, hi, stride)
        j = int(np.argmin(sse))
        accept = sse <= sse[j] + _CHI2_2_95 * sigma2
        abrupt = b - a <= (1 if binned else 0)
        jump = bool(abrupt[accept].any())  # an abrupt change is within the 95% profile set
        if jump:
            cut = int(a[np.argmin(np.where(abrupt, sse, np.inf))])
            ja = jb = _refine(z, lo, lo + cut, hi, stride) - lo
            span = (lo + ja, lo + ja)
        else:
            ja, jb = int(a[j]), int(b[j])
            span = (lo + float(np.min(a[accept] + 0.1 * (b[accept] - a[accept]))),
                    lo + float(np.max(a[accept] + 0.9 * (b[accept] - a[accept]))))
        before, after = _levels(z, lo, hi, ja, jb)
        p = _p_value(null, stat, tests)
        local = 1.0 if weights is None else float(np.mean(weights[lo:hi]))
        out.append(_Change(lo, hi, ja, jb, after - before, stat, p, jump, span, local))
    return out
