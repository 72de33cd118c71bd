"""Per-step fitness signals of each reward axis: pure functions over polars frames.

A reward axis is noisy per sample; what the analysis needs per run × step ×
axis is its level (mean, with n and std), a smoothed level (EMA), its local
trend (OLS slope over a trailing window) and a scale-free version (z) so
axes with different ranges can be compared on one plot.

Definitions (hand-checked in tests/analysis/test_analysis_fitness.py):

* ``n``, ``mean``, ``std``: over the samples of the step; ``std`` has
  ddof = 1 (null when n = 1).
* ``ema``: ``ema[0] = mean[0]``, ``ema[t] = a * mean[t] + (1 - a) * ema[t-1]``
  with ``a = 2 / (span + 1)``, over logged steps in order.
* ``slope``: least-squares slope of ``mean`` against ``step`` over the last
  ``window`` logged steps (this one included); null with fewer than 2.
* ``z``: ``(mean - mean of means) / std of means (ddof = 1)`` within the
  run × axis; 0 when the means do not vary.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

__all__ = ["DEFAULT_SPAN", "DEFAULT_WINDOW", "AXIS_KEYS", "TASK_KEYS", "step_stats", "fitness_signals"]

DEFAULT_SPAN = 10
DEFAULT_WINDOW = 20
AXIS_KEYS = ("run_id", "kind", "axis")
TASK_KEYS = ("run_id", "task_id", "kind", "axis")


def step_stats(axes: pl.DataFrame, by: Sequence[str] = AXIS_KEYS) -> pl.DataFrame:
    """n, mean, std of ``value`` per ``by`` × ``step`` (input: ``sample_axes`` rows)."""
    by = list(by)
    return (
        axes.drop_nulls("value")
        .group_by([*by, "step"])
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("value").mean().alias("mean"),
            pl.col("value").std(ddof=1).alias("std"),
        )
        .sort([*by, "step"])
    )


def fitness_signals(
    stats: pl.DataFrame,
    *,
    by: Sequence[str] = AXIS_KEYS,
    span: int = DEFAULT_SPAN,
    window: int = DEFAULT_WINDOW,
) -> pl.DataFrame:
    """Add ``ema``, ``slope`` and ``z`` to per-step stats (see module docstring)."""
    if span < 1 or window < 2:
        raise ValueError(f"span={span}, window={window}: need span >= 1 and window >= 2")
    by = list(by)
    alpha = 2.0 / (span + 1.0)
    x, y = pl.col("step").cast(pl.Float64), pl.col("mean")

    def roll(expr: pl.Expr) -> pl.Expr:
        return expr.rolling_mean(window, min_samples=2).over(by)

    mean_x, mean_y = roll(x), roll(y)
    cov = roll(x * y) - mean_x * mean_y
    var = roll(x * x) - mean_x * mean_x
    centre = y.mean().over(by)
    spread = y.std(ddof=1).over(by)
    return (
        stats.sort([*by, "step"])
        .with_columns(
            y.ewm_mean(alpha=alpha, adjust=False).over(by).alias("ema"),
            pl.when(var > 0).then(cov / var).alias("slope"),
            pl.when(spread > 0).then((y - centre) / spread).otherwise(0.0).alias("z"),
        )
    )
