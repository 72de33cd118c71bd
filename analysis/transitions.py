"""Changes of a reward axis that hold up against its own noise: jumps and phases.

A reward axis's step mean is noisy in three ways that a change detector must
not mistake for change: per-step sampling noise (whose size is logged: the
step's ``std`` and ``n``), slow drift (the policy wanders), and autocorrelated
wobble. This module models all three, scans for level changes larger than
they explain, tests each, and reports a change as a **jump** (abrupt: its
duration is not distinguishable from zero) or a **phase** (a gradual change
between two levels, with onset at 10% and end at 90% of it).

Method:

1. **Scale.** A binary axis (every step's ``std`` is what 0/1 samples give) is
   put through Anscombe's (1948) arcsine-root transform, so that its sampling
   variance no longer depends on its level (a proportion near 0 is quiet, near
   0.5 loud). Where ``std``/``n`` are logged, the noise of each step follows
   its smoothed sampling variance ``std^2 / n``.
2. **Noise model** (:mod:`analysis.noise_model`, after DeCAFS, Romano,
   Rigaill, Runge & Fearnhead 2022): white sampling noise + random-walk drift
   + AR(1) wobble, fitted to robust variances of ``y[t+k] - y[t]``.
3. **Scan** (multiscale MOSUM: Eichinger & Kirch 2018, Bernoulli; Cho & Kirch
   2022): at widths ``h = min_size * 2^j <= n/4`` the difference of the means
   of the ``h`` steps after and before each step, divided by its exact
   standard deviation *under the fitted noise model*. Drift and wobble
   therefore widen the threshold instead of being cut into stairs.
4. **Test.** The threshold is the ``1 - alpha`` quantile of the scan's
   maximum over every position and width for white noise of the same length
   (Monte Carlo, 2,000 series, fixed seed; conservative for smoother noise,
   which has fewer independent positions); ``p_value`` is that family-wise
   p-value (Bonferroni beyond the simulated range). A change smaller than
   ``min_effect`` noise SDs is not reported. A change inflates the variogram
   as drift does, so the noise model is refitted leaving out the differences
   that span the likeliest change (even before it passes) and every change
   found; changes are then judged by the refit at ``alpha / 2`` (Bonferroni
   over the two noise models).
5. **Shape and place.** Same-direction detections whose windows overlap are
   one change. Over its window a flat-ramp-flat curve is fitted by least
   squares for every (start, end): the change is a **jump** when a ramp of
   length zero is inside the 95% profile-likelihood set (chi-square(2) with
   the long-run noise variance), otherwise a **phase** with ``onset_step`` and
   ``end_step`` at 10% and 90% of the best ramp. The 95% interval of where it
   happened (``onset_lo``, ``end_hi``) is Bai's (1994) ``+-11.03 sigma^2 /
   delta^2`` for a jump, the extremes of the 10%/90% points over the profile
   set for a phase.

``before``/``after`` are the fitted levels either side on the axis's own
scale; ``size`` is the change in noise SDs (``sqrt(s + a + q)`` of the model,
scaled to the sampling noise around the change); ``z`` is the scan statistic. Calibration on null and
planted series: ``benchmarks/calibrate_transitions.py``; the table is in
``docs/analysis.md``.

Departures from the papers: DeCAFS's penalised dynamic programme is replaced
by the MOSUM scan under DeCAFS's noise model (the scan is O(n) per width and
its threshold explicit); the MOSUM asymptotic critical value is replaced by a
simulated one (the asymptotics are poor for n/h < 50); Cho & Kirch's
bottom-up merge across widths is replaced by merging overlapping windows and
a ramp fit; series longer than ``max_points`` are averaged into that many
bins, and a jump is then placed on the raw steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from analysis.noise_model import NoiseModel, fit_noise, is_binary, mosum_var, sampling_variance

__all__ = ["Transition", "NoiseModel", "SeriesChanges", "analyse_series", "detect_transitions",
           "transitions_table", "BAI_95"]

#: 97.5% quantile of |argmax_s W(s) - |s|/2| (Bai 1994, Table 1): a jump's 95%
#: location interval is +- BAI_95 * sigma^2 / delta^2 steps.
BAI_95 = 11.03
_CHI2_2_95 = 5.991


@dataclass(frozen=True)
class Transition:
    """One change of level.

    ``onset_step``/``end_step``: where 10% and 90% of the change is done (equal
    for a jump); ``onset_lo``/``end_hi``: the 95% interval of the change's
    place; ``size``: the change in noise SDs; ``z``/``p_value``: its test.
    """

    onset_step: int
    end_step: int
    before: float
    after: float
    shape: str = "jump"
    size: float = math.nan
    z: float = math.nan
    p_value: float = math.nan
    onset_lo: int | None = None
    end_hi: int | None = None

    @property
    def delta(self) -> float:
        return self.after - self.before


@dataclass(frozen=True)
class SeriesChanges:
    """What :func:`analyse_series` found: the changes, or the reason there are none."""

    transitions: list[Transition]
    reason: str | None = None
    noise: NoiseModel | None = None


def _window_means(c: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """For t = h..n-h: mean of [t-h, t) and of [t, t+h) (``c`` = cumsum with a leading 0)."""
    n = len(c) - 1
    t = np.arange(h, n - h + 1)
    return (c[t] - c[t - h]) / h, (c[t + h] - c[t]) / h


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


def _bin(y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin means, start index of each bin)."""
    size = int(np.ceil(len(y) / max_points))
    starts = np.arange(0, len(y), size)
    return np.add.reduceat(y, starts) / np.diff(np.append(starts, len(y))), starts


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


def _reason(y: np.ndarray, min_size: int) -> str | None:
    if len(y) == 0:
        return "no values"
    if len(y) < 4 * min_size:
        return f"too short: {len(y)} steps with a value, need {4 * min_size}"
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return "constant"
    return None


def analyse_series(
    steps: Sequence[int],
    values: Sequence[float],
    *,
    n: Sequence[int] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.05,
    min_size: int = 5,
    min_effect: float = 0.5,
    max_points: int = 2000,
) -> SeriesChanges:
    """Jumps and phases of ``values`` (per-step means, ordered by ``steps``); see the module docstring.

    ``n``/``std``: per-step sample count and standard deviation (the ``fitness``
    columns), used for the noise scale when given. ``alpha``: family-wise
    false-finding rate per series. ``min_effect``: smallest change reported,
    in noise SDs.
    """
    steps = np.asarray(steps)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(y)
    n_arr = None if n is None else np.asarray(n, dtype=float)[keep]
    std_arr = None if std is None else np.asarray([np.nan if v is None else v for v in std], dtype=float)[keep]
    steps, y = steps[keep], y[keep]
    reason = _reason(y, min_size)
    if reason:
        return SeriesChanges([], reason)
    binary = is_binary(y, std_arr, n_arr)
    z = y
    if binary:  # Anscombe (1948): k successes of n -> arcsin sqrt((k + 3/8) / (n + 3/4))
        z = np.arcsin(np.sqrt((np.rint(y * n_arr) + 0.375) / (n_arr + 0.75)))
    white, weights = sampling_variance(std_arr, n_arr, binary, 4 * min_size)
    raw_y, raw_z = y, z
    starts = np.arange(len(y))
    if len(y) > max_points:
        z, starts = _bin(z, max_points)
        if weights is not None:
            weights = _bin(weights, max_points)[0]
            weights = weights / np.median(weights)
    if white is not None and len(z) < len(raw_z):
        white /= len(raw_z) / len(z)  # a bin averages that many steps
    binned = len(z) < len(raw_z)
    floor = (1e-6 * float(np.ptp(z))) ** 2  # a noise-free step is still a step: its size is huge, not undefined
    noise = _floored(fit_noise(z, white=white, scale=weights), floor)
    # A change inflates the variogram as drift does: refit it leaving out the differences that span
    # the likeliest change (even when nothing passes yet) and those found; judge by the refit, at
    # alpha / 2 (Bonferroni over the two noise models tried).
    changes = _locate(z, noise, weights, min_size, alpha, seed=True, binned=binned)
    level, judged = alpha, False
    for _ in range(3):
        # a trial change is left out only as a jump (one step); a phase only once it is significant
        spans = [(c.lo + c.a, c.lo + c.b + 1) for c in changes
                 if c.b - c.a < len(z) // 4 and (c.jump or c.p_value <= level)]
        if not spans:
            break
        noise, level = _floored(fit_noise(z, exclude=spans, white=white, scale=weights), floor), alpha / 2
        found, judged = _locate(z, noise, weights, min_size, level, binned=binned), True
        settled = [(c.lo + c.a, c.lo + c.b) for c in found] == [(c.lo + c.a, c.lo + c.b) for c in changes]
        changes = found
        if settled:
            break
    if not judged:  # no refit: drop the trial change, keep what passes on its own
        changes = _locate(z, noise, weights, min_size, level, binned=binned)
    out = [_transition(c, noise, steps, raw_y, raw_z, starts, len(z)) for c in changes]
    return SeriesChanges([t for t in out if abs(t.size) >= min_effect], None, noise)


def _floored(noise: NoiseModel, floor: float) -> NoiseModel:
    return noise if noise.s >= floor else NoiseModel(floor, noise.q, noise.a, noise.phi)


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


def _transition(c: _Change, noise: NoiseModel, steps: np.ndarray, raw_y: np.ndarray, raw_z: np.ndarray,
                starts: np.ndarray, scanned: int) -> Transition:
    """A change found on the scanned series, placed and measured on the raw steps."""
    length = len(raw_y)
    raw_lo, raw_hi = _to_raw(c.lo, starts, length), _to_raw(c.hi, starts, length)
    if c.jump:
        cut = _to_raw(c.lo + c.a, starts, length)
        if scanned < length:
            cut = _refine(raw_z, raw_lo, cut, raw_hi, int(starts[1]))
        half = BAI_95 * noise.long_run_var / max(c.delta * c.delta, 1e-300) * length / scanned
        onset = end = cut
        ramp = (cut - raw_lo, cut - raw_lo)
        lo_r, hi_r = cut - math.ceil(half), cut + math.ceil(half)
    else:
        w = c.b - c.a
        onset, end, lo_r, hi_r = (_to_raw(v, starts, length) for v in (
            c.lo + c.a + 0.1 * w, c.lo + c.a + 0.9 * w, *c.span))
        ramp = (_to_raw(c.lo + c.a, starts, length) - raw_lo, _to_raw(c.lo + c.b, starts, length) - raw_lo)
    before, after = _levels(raw_y, raw_lo, raw_hi, *ramp)
    return Transition(
        int(steps[onset]), int(steps[end]), before, after, "jump" if c.jump else "phase",
        float(c.delta / (noise.sd * math.sqrt(c.local))), float(c.stat), c.p_value,
        int(steps[max(lo_r, 0)]), int(steps[min(hi_r, length - 1)]),
    )


def _to_raw(i: float, starts: np.ndarray, length: int) -> int:
    """Index on the (maybe binned) series -> index on the raw series."""
    i = int(round(i))
    if i <= 0:
        return 0
    if i >= len(starts):
        return length - 1
    return int(starts[i])


def detect_transitions(steps: Sequence[int], values: Sequence[float], **options) -> list[Transition]:
    """The changes :func:`analyse_series` finds (options as there)."""
    return analyse_series(steps, values, **options).transitions


TRANSITION_SCHEMA = {
    "onset_step": pl.Int64, "end_step": pl.Int64, "before": pl.Float64, "after": pl.Float64,
    "delta": pl.Float64, "shape": pl.String, "size": pl.Float64, "z": pl.Float64, "p_value": pl.Float64,
    "onset_lo": pl.Int64, "end_hi": pl.Int64,
}


def transitions_table(
    fitness: pl.DataFrame, by: Sequence[str] = ("run_id", "kind", "axis"), value: str = "mean", **options
) -> pl.DataFrame:
    """Changes of every series in ``fitness``: columns ``by`` + Transition fields + delta.

    Uses the ``n`` and ``std`` columns for the noise scale when ``fitness`` has them.
    """
    return changes_tables(fitness, by, value, **options)[0]


def changes_tables(
    fitness: pl.DataFrame, by: Sequence[str] = ("run_id", "kind", "axis"), value: str = "mean", **options
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(transitions, notes): the changes of every series, and per series why none could be judged."""
    rows, notes = [], []
    has_noise = {"n", "std"} <= set(fitness.columns)
    for key, group in fitness.sort([*by, "step"]).group_by(list(by), maintain_order=True):
        found = analyse_series(
            group["step"].to_numpy(), group[value].to_numpy(),
            n=group["n"].to_numpy() if has_noise else None,
            std=group["std"].to_list() if has_noise else None, **options,
        )
        ident = dict(zip(by, key))
        if found.reason:
            notes.append({**ident, "reason": found.reason})
        for t in found.transitions:
            rows.append({**ident, **asdict(t), "delta": t.delta})
    schema = {k: pl.String for k in by} | TRANSITION_SCHEMA
    frame = pl.DataFrame(rows, schema=schema)
    order = [*by, "onset_step", "end_step", "before", "after", "delta", "shape", "size", "z", "p_value",
             "onset_lo", "end_hi"]
    return frame.select(order), pl.DataFrame(notes, schema={k: pl.String for k in by} | {"reason": pl.String})
