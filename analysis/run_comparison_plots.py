"""Figures that compare runs, for the report's index page: each takes tables and returns a Figure.

Every run's reward axes side by side, and the steps each group of runs took to generalise.
Built like the figures of :mod:`analysis.plots` (``matplotlib.figure.Figure``, no pyplot),
from the building blocks in :mod:`analysis._plot_helpers`.
"""

from __future__ import annotations

import polars as pl
from matplotlib.figure import Figure

from analysis._plot_helpers import _empty, _grid, _thin, _txt

__all__ = ["compare_runs", "generalisation_steps"]


def compare_runs(fitness: pl.DataFrame, kind: str = "reward") -> Figure:
    """Per axis of ``kind``, every run's EMA, smoothed over ~1% of the steps for display."""
    frame = fitness.filter(pl.col("kind") == kind)
    names = sorted(frame["axis"].unique().to_list())
    if not names:
        return _empty(f"no {kind} axes logged")
    run_ids = sorted(frame["run_id"].unique().to_list())
    many = len(run_ids) > 8
    fig, axes = _grid(len(names), height=3.0 if many else 2.6)
    colours = _colours(len(run_ids))
    for ax, name in zip(axes, names):
        for i, run_id in enumerate(run_ids):
            f = _thin(frame.filter((pl.col("axis") == name) & (pl.col("run_id") == run_id)).sort("step"))
            if f.is_empty():
                continue
            smooth = f["ema"].rolling_mean(max(1, f.height // 100), min_samples=1)
            ax.plot(f["step"].to_numpy(), smooth.to_numpy(), color=colours[i], linewidth=1.2,
                    linestyle="-" if i < 20 else "--", label=_txt(run_id))
        ax.set_title(_txt(name), fontsize=10)
        ax.tick_params(labelsize=7)
    if many:  # one legend for the figure, beside the panels, with runs from every panel
        found: dict[str, object] = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                found.setdefault(label, handle)
        labels = sorted(found)
        handles = [found[label] for label in labels]
        fig.subplots_adjust(right=0.84)
        fig.legend(handles, labels, loc="upper right", fontsize=7, ncol=1 + len(run_ids) // 30, frameon=False)
    else:
        axes[0].legend(fontsize=7, loc="best")
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def generalisation_steps(table: pl.DataFrame) -> Figure:
    """Steps to generalise per group of runs: mean with min-max bars."""
    rows = table.filter(pl.col("generalised") > 0)
    if rows.is_empty():
        return _empty("no run reached the generalisation threshold")
    fig, axes = _grid(1, ncols=1, height=max(2.0, 0.4 * rows.height + 1))
    ax = axes[0]
    y = list(range(rows.height))
    mean, low, high = rows["mean_steps"].to_numpy(), rows["min_steps"].to_numpy(), rows["max_steps"].to_numpy()
    ax.errorbar(mean, y, xerr=[mean - low, high - mean], fmt="o", capsize=3)
    ax.set_yticks(y, [_txt(f"{g} (n={n})") for g, n in zip(rows["group"], rows["generalised"])], fontsize=7)
    ax.set_xlabel("steps to generalise (mean, min-max)", fontsize=8)
    return fig
