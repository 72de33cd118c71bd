"""Fitness shaping: how raw fitness becomes the weights of an ES update.

Pure functions over one population's fitness values, shared by the search (which
shapes each generation's member fitness before the update) and by
``rg-tracer fitness export`` (which writes the shaped column beside the raw one, so a
consumer never normalises twice).

``none``           the raw values.
``zscore``         ``(f - mean) / std`` (population std, ddof 0); all zeros when the
                   values do not vary, so a flat generation moves nothing.
``centered_rank``  rank scaled to ``[-0.5, 0.5]`` (Salimans et al. 2017), ties share
                   their mean rank; robust to outliers and to the scale of the mixer
                   weights, which is why the search uses it by default.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from rg_tracer.errors import UserError

__all__ = ["SHAPINGS", "no_shaping", "zscore", "centered_rank", "shape_fitness"]

_FLAT = 1e-12


def no_shaping(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).copy()


def zscore(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    std = x.std()
    return np.zeros_like(x) if std < _FLAT else (x - x.mean()) / std


def centered_rank(values: Sequence[float]) -> np.ndarray:
    """Ranks 0..n-1 mapped linearly onto [-0.5, 0.5]; tied values get their mean rank."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return np.zeros_like(x)
    ranks = np.empty(n)
    ranks[np.argsort(x, kind="stable")] = np.arange(n)
    _, tie_group = np.unique(x, return_inverse=True)
    ranks = (np.bincount(tie_group, weights=ranks) / np.bincount(tie_group))[tie_group]
    return ranks / (n - 1) - 0.5


SHAPINGS: dict[str, Callable[[Sequence[float]], np.ndarray]] = {
    "none": no_shaping,
    "zscore": zscore,
    "centered_rank": centered_rank,
}


def shape_fitness(values: Sequence[float], method: str) -> np.ndarray:
    """Apply the shaping named ``method`` (one of :data:`SHAPINGS`)."""
    if method not in SHAPINGS:
        raise UserError(f"unknown fitness shaping {method!r}; choose one of {', '.join(SHAPINGS)}")
    return SHAPINGS[method](values)
