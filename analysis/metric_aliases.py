"""Metrics that are one series under several names: found once, tested once.

**Aliases.** Metrics identical up to a positive scale and shift (to float32 precision) (``kl`` and
``upstream/loss/kl = beta * kl`` with a fixed beta; in ``rg-tracer/1`` logs also ``kl/value`` and
``loss/total``; a metric a user's scorer logs twice) have identical correlations: each group is
tested once, under one name (a core schema key if there is one, else the shortest name), and
the others are listed in its ``aliases`` column; they get no rows of their own.
"""

from __future__ import annotations

import numpy as np

from analysis.correlation_stats import _flat
from analysis.step_series import _Series


def _aliases(series: dict[str, _Series]) -> dict[str, list[str]]:
    """Representative name -> the other names of series identical up to a positive scale and shift."""
    from rg_tracer.schema import RL_KEYS

    groups: dict[tuple, list[str]] = {}
    for name, s in series.items():
        if len(s.values) < 2 or _flat(s.values):
            continue
        groups.setdefault((len(s.steps), s.steps.tobytes()), []).append(name)
    out: dict[str, list[str]] = {}
    for names in groups.values():
        if len(names) < 2:
            continue
        z = {}
        for name in names:
            v = series[name].values
            z[name] = (v - v.mean()) / v.std()
        left = sorted(names, key=lambda nm: (nm not in RL_KEYS, len(nm), nm))
        while left:
            rep, rest = left[0], left[1:]
            # z-scores agree to float32 precision: a metric logged as a scaled copy (loss/kl = kl_coef * kl)
            same = [nm for nm in rest if np.allclose(z[rep], z[nm], rtol=0, atol=1e-6)]
            if same:
                out[rep] = same
            left = [nm for nm in rest if nm not in same]
    return out
