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
3. **Scan** (:mod:`analysis.mosum_scan`; multiscale MOSUM): the difference of
   the window means after and before each step, at several widths, divided by
   its standard deviation under the fitted noise model.
4. **Test** (:mod:`analysis.mosum_scan`): against the simulated family-wise
   threshold of the scan's maximum; ``p_value`` is that family-wise p-value.
   A change smaller than ``min_effect`` noise SDs is not reported. A change
   inflates the variogram as drift does, so the noise model is refitted
   leaving out the differences that span the likeliest change (even before it
   passes) and every change found; changes are then judged by the refit at
   ``alpha / 2`` (Bonferroni over the two noise models).
5. **Shape and place** (:mod:`analysis.change_shape`): overlapping detections
   are one change, a **jump** or a **phase** by a flat-ramp-flat fit, with the
   95% interval of where it happened.

``before``/``after`` are the fitted levels either side on the axis's own
scale; ``size`` is the change in noise SDs (``sqrt(s + a + q)`` of the model,
scaled to the sampling noise around the change); ``z`` is the scan statistic. Calibration on null and
planted series: ``benchmarks/calibrate_transitions.py``; the table is in
``docs/analysis.md``.

Departures from the papers (those of the scan and of the merge of detections
are in :mod:`analysis.mosum_scan` and :mod:`analysis.change_shape`): series
longer than ``max_points`` are averaged into that many bins, and a jump is
then placed on the raw steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from analysis.change_shape import _Change, _levels, _locate, _refine
from analysis.noise_model import NoiseModel, fit_noise, is_binary, sampling_variance

__all__ = ["Transition", "NoiseModel", "SeriesChanges", "analyse_series", "detect_transitions",
           "transitions_table", "BAI_95"]

#: 97.5% quantile of |argmax_s W(s) - |s|/2| (Bai 1994, Table 1): a jump's 95%
#: location interval is +- BAI_95 * sigma^2 / delta^2 steps.
BAI_95 = 11.03


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


def _bin(y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin means, start index of each bin)."""
    size = int(np.ceil(len(y) / max_points))
    starts = np.arange(0, len(y), size)
    return np.add.reduceat(y, starts) / np.diff(np.append(starts, len(y))), starts


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
