"""A series on its own logging cadence, and a pair of series aligned on one step grid.

**Alignment.** Each series keeps its own logging cadence ``every`` (the median step between
its logged values: ``diag/*`` metrics are often logged every N > 1 steps). A pair is analysed
on the grid of its sparser series (the metric's, unless the axis is sparser): the denser one
is averaged over the steps nearest each grid point (centred blocks of ``every`` steps), so a
metric logged every 5 steps is compared with the axis averaged over the 5 steps around each of
its steps. Lags are multiples of the grid spacing and always reported in **steps** (``max_lag``
is rounded up to a whole number of grid steps). Steps align by number: a difference, residual
or lagged pair that touches a missing grid point is dropped.

How this departs from the methods of :mod:`analysis.lead_lag_test`: sparse series are
block-averaged onto the coarser grid (not in any of the references).

**Cost.** Memory and time follow the number of *logged* steps, not their values: where a pair's
grid has a gap (no value in either series) longer than the lags looked at plus
:data:`GAP_MARGIN` grid points, the gap is cut to that length before any array is built (one
log line at step 50,000,000 after steps 1..100 costs 100 + a few dozen grid points, not 50M).
Nothing a test compares spans such a gap (lags, the AR filter's order <= 10, Bartlett's 10
autocorrelations, differences), so the statistics are those of the uncut grid, except that
the AR order limit ``n // 10`` and the block bootstrap see the shorter series.

A gridded series caches what the tests ask of it (whether it varies, its AR filter and
prewhitened residuals from :mod:`analysis.prewhitening`, its differences and ranks), so each
series is filtered once however many pairs it is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from analysis.correlation_stats import _ranks, pearson, spearman
from analysis.prewhitening import ar_fit, ar_residuals

#: A series whose value changes at fewer steps than this (and 1% of its steps)
#: is treated as constant: a few blips cannot carry a correlation.
MIN_CHANGES = 10
#: Grid points kept of a gap beyond the lags looked at: more than the AR order (<= 10) and
#: Bartlett's autocorrelation lags (10), so no compared pair spans a cut gap.
GAP_MARGIN = 12


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


def _cadence(steps: np.ndarray) -> tuple[int, int]:
    """(every, phase): median step between logged values, and the commonest ``step % every``."""
    if len(steps) < 3:
        return 1, 0
    every = max(1, int(np.median(np.diff(steps))))
    if every == 1:
        return 1, 0
    residues, counts = np.unique(steps % every, return_counts=True)  # not bincount: every may be huge
    return every, int(residues[np.argmax(counts)])


@dataclass(frozen=True)
class _Squeeze:
    """Grid index -> array position, with every gap longer than ``keep`` cut to ``keep`` points."""

    points: np.ndarray | None = None  # sorted grid indices with a value (None: the identity)
    shift: np.ndarray | None = None  # positions to subtract at each of ``points``

    @classmethod
    def of(cls, grids: list[np.ndarray], keep: int) -> _Squeeze:
        points = np.unique(np.concatenate(grids))
        cut = np.maximum(np.diff(points) - keep - 1, 0)
        if not cut.any():
            return cls()
        return cls(points, np.concatenate([[0], np.cumsum(cut)]))

    @property
    def key(self) -> bytes | None:
        return None if self.points is None else self.points.tobytes() + self.shift.tobytes()

    def __call__(self, g: np.ndarray) -> np.ndarray:
        if self.points is None:
            return g
        return g - self.shift[np.searchsorted(self.points, g)]


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

    def grid(self, every: int, phase: int) -> np.ndarray:
        """The grid index of each logged value (nearest grid point: centred blocks)."""
        return (self.steps - phase + every // 2) // every

    def on(self, every: int, phase: int, squeeze: _Squeeze = _Squeeze()) -> _Gridded | None:
        key = (every, phase, squeeze.key)
        if key not in self.grids:
            if len(self.steps) == 0:
                self.grids[key] = None
            else:
                g = squeeze(self.grid(every, phase))
                g0 = int(g[0])
                idx = g - g0
                counts = np.bincount(idx)
                sums = np.bincount(idx, weights=self.values)
                with np.errstate(invalid="ignore", divide="ignore"):
                    values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
                self.grids[key] = _Gridded(g0, values)
        return self.grids.pop(key) if squeeze.key is not None else self.grids[key]  # a cut grid: one pair's

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
