"""Building blocks of the report's figures: panel grids, empty figures, safe labels, thinning.

Shared by :mod:`analysis.plots` (a run's figures) and :mod:`analysis.run_comparison_plots`
(figures across runs). Long series are thinned to ~``MAX_POINTS`` points for drawing only.
"""

from __future__ import annotations

import math

import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MAX_POINTS = 4000
_WIDTH = 11.0


def _thin(frame: pl.DataFrame) -> pl.DataFrame:
    every = max(1, math.ceil(frame.height / MAX_POINTS))
    return frame.gather_every(every) if every > 1 else frame


def _grid(n: int, ncols: int = 2, height: float = 2.6, title: str | None = None) -> tuple[Figure, list]:
    n = max(n, 1)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    head = 0.45 + (0.3 if title else 0.0)  # inches above the first row
    total = height * nrows + head + 0.15
    fig = Figure(figsize=(_WIDTH, total))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.6 / total, top=1 - head / total,
                        hspace=0.6, wspace=0.2 if ncols <= 2 else 0.42)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.12 / total, va="top")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for extra in axes[n:]:
        extra.set_visible(False)
    for ax in axes[:n]:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # steps
    return fig, axes[:n]


def _empty(message: str) -> Figure:
    fig = Figure(figsize=(_WIDTH, 1.2))
    fig.text(0.5, 0.5, message, ha="center", va="center", color="0.4")
    return fig


def _txt(text: object) -> str:
    """A log-derived string as literal text: no mathtext, not hidden from legends."""
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _label(kind: str, axis: str) -> str:
    return _txt(axis if kind == "reward" else f"{kind}: {axis}")
