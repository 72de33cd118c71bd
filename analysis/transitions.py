"""Abrupt changes of a reward axis: change points on its per-step mean.

Method (how it departs from plain ``ruptures.Pelt``):

1. Series longer than ``max_points`` are averaged into that many bins first,
   so PELT (quadratic in the worst case) stays fast on 60k steps.
2. The noise level sigma is estimated from first differences
   (``MAD(diff) / (0.6745 * sqrt 2)``, robust to the jumps themselves), and
   the penalty is ``penalty * sigma^2 * log(n)`` (BIC-like), so a constant
   or white-noise axis reports no change at any scale.
3. With binning, each change is moved to the best single split of the raw
   series within one bin of it.
4. Consecutive changes in the same direction separated by a short plateau
   (< ``merge_within`` bins or ``merge_frac`` of the series: the staircase
   PELT fits to a ramp or a sigmoid) merge into one transition.
   ``onset_step`` is where the staircase has covered 10% of the total
   change, ``end_step`` where it has covered 90% (equal for a clean jump).

``before``/``after`` are the raw means of the segments either side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

__all__ = ["Transition", "detect_transitions", "transitions_table"]


@dataclass(frozen=True)
class Transition:
    """One change of level: first step of the change, first step of the new level."""

    onset_step: int
    end_step: int
    before: float
    after: float

    @property
    def delta(self) -> float:
        return self.after - self.before


def _pelt(y: np.ndarray, min_size: int, pen: float) -> list[int]:
    """Penalised PELT, least-squares (``l2``) cost.

    ruptures' ``KernelCPD`` with a linear kernel minimises exactly the cost of
    ``Pelt(model="l2")`` (tests check they agree) but runs in C, not Python.
    """
    import ruptures as rpt  # imported here: it pulls in scipy.stats (slow, and it probes torch)

    return rpt.KernelCPD(kernel="linear", min_size=min_size, jump=1).fit(y).predict(pen=pen)[:-1]


def _noise(y: np.ndarray) -> float:
    d = np.diff(y)
    sigma = np.median(np.abs(d - np.median(d))) / (0.6745 * np.sqrt(2))
    if sigma == 0:  # piecewise constant: any non-zero scale separates real jumps
        sigma = np.std(d) / np.sqrt(2)
    return float(sigma)


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


def detect_transitions(
    steps: Sequence[int],
    values: Sequence[float],
    *,
    min_size: int = 5,
    penalty: float = 4.0,
    max_points: int = 2000,
    merge_within: int | None = None,
    merge_frac: float = 0.1,
) -> list[Transition]:
    """Change points of ``values`` (per-step means, ordered by ``steps``)."""
    steps = np.asarray(steps)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(y)
    steps, y = steps[keep], y[keep]
    if len(y) < 2 * min_size or np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return []
    yb, starts = _bin(y, max_points) if len(y) > max_points else (y, np.arange(len(y)))
    sigma = _noise(yb)
    if sigma == 0 or len(yb) < 2 * min_size:
        return []
    pen = penalty * sigma**2 * np.log(len(yb))
    cuts = _pelt(yb, min_size, pen)
    if not cuts:
        return []
    raw = [int(starts[c]) for c in cuts]  # bin index -> raw index
    if len(yb) < len(y):
        radius = int(starts[1])
        edges = [0, *raw, len(y)]
        raw = [_refine(y, edges[i], raw[i], edges[i + 2], radius) for i in range(len(raw))]
    edges = [0, *raw, len(y)]
    means = [float(y[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])]
    plateau = max(merge_within if merge_within is not None else 3 * min_size, int(merge_frac * len(yb)))
    plateau_raw = plateau * (len(y) / len(yb))
    groups: list[list[int]] = []  # runs of same-direction cuts with short plateaus between
    for i in range(len(raw)):
        up = means[i + 1] > means[i]
        if groups and edges[i + 1] - edges[i] < plateau_raw and (means[i] > means[i - 1]) == up:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = []
    for g in groups:
        before, after = means[g[0]], means[g[-1] + 1]
        progress = [(means[i + 1] - before) / (after - before) for i in g]
        onset = next(i for i, p in zip(g, progress) if p >= 0.1)
        end = next(i for i, p in zip(g, progress) if p >= 0.9)
        out.append(Transition(int(steps[raw[onset]]), int(steps[raw[end]]), before, after))
    return out


def transitions_table(
    fitness: pl.DataFrame, by: Sequence[str] = ("run_id", "kind", "axis"), value: str = "mean", **options
) -> pl.DataFrame:
    """Transitions of every series in ``fitness``; columns ``by`` + Transition fields + delta."""
    rows = []
    for key, group in fitness.sort([*by, "step"]).group_by(list(by), maintain_order=True):
        for t in detect_transitions(group["step"].to_numpy(), group[value].to_numpy(), **options):
            rows.append({**dict(zip(by, key)), **asdict(t), "delta": t.delta})
    schema = {k: pl.String for k in by} | {
        "onset_step": pl.Int64, "end_step": pl.Int64, "before": pl.Float64, "after": pl.Float64, "delta": pl.Float64
    }
    return pl.DataFrame(rows, schema=schema)
