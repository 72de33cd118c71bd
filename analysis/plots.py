"""Figures for the report: each function takes tables and returns a Figure.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so
rendering never touches a GUI backend or pyplot's global figure list (no
``plt.show()``, nothing to close); a notebook displays the returned Figure.
This module has the figures of one run; those comparing runs (the index page)
are in :mod:`analysis.run_comparison_plots`, and the layout helpers both use
(panel grids, thinning long series for drawing) in :mod:`analysis._plot_helpers`.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis._plot_helpers import _WIDTH, _empty, _grid, _label, _thin, _txt
from rg_tracer.schema import RL_KEYS

__all__ = [
    "axis_curves",
    "metric_curves",
    "correlation_heatmap",
    "lead_lag_plot",
    "task_curves",
    "eval_vs_train",
]


#: Most panels of a per-axis figure (each costs ~0.1 s to draw); the tables list every axis.
MAX_PANELS = 48


def _panels(keys: list, first: set | None = None, what: str = "axes",
            max_panels: int = MAX_PANELS) -> tuple[list, str | None]:
    """The keys drawn (rewards, then those in ``first``, then by name) and a title saying what was left out."""
    ordered = sorted(keys, key=lambda k: (k[0] != "reward", k not in (first or set()), k))
    if len(ordered) <= max_panels:
        return sorted(keys), None
    shown = sorted(ordered[:max_panels])
    return shown, f"{len(shown)} of {len(ordered)} {what} (every one is in the tables)"


def axis_curves(fitness: pl.DataFrame, transitions: pl.DataFrame) -> Figure:
    """Per axis: step mean (thin), EMA (thick), ±1 standard error band, transitions shaded.

    The band is the standard error of the step mean (std / sqrt n), not the
    per-sample std, which for 0/1 rewards would hide the curve.
    """
    series = fitness.partition_by(["kind", "axis"], as_dict=True, maintain_order=True)
    if not series:
        return _empty("no axis values logged")
    changed = set(transitions.select("kind", "axis").iter_rows()) if transitions.height else set()
    keys, note = _panels(list(series), changed)
    fig, axes = _grid(len(keys), title=note)
    for ax, ((kind, axis), frame) in zip(axes, [(k, series[k]) for k in keys]):
        f = _thin(frame.sort("step"))
        x = f["step"].to_numpy()
        mean = f["mean"].to_numpy()
        se = (f["std"].fill_null(0.0) / f["n"].cast(pl.Float64).sqrt()).to_numpy()
        ax.fill_between(x, mean - se, mean + se, color="C0", alpha=0.15, linewidth=0, label="±1 s.e.")
        ax.plot(x, mean, color="C0", alpha=0.45, linewidth=0.8, label="step mean")
        ax.plot(x, f["ema"].to_numpy(), color="C0", linewidth=2.0, label="EMA")
        marks = transitions.filter((pl.col("kind") == kind) & (pl.col("axis") == axis))
        for t in marks.iter_rows(named=True):
            ax.axvspan(t["onset_step"], max(t["end_step"], t["onset_step"] + 0.5), color="C3", alpha=0.2)
            ax.axvline(t["onset_step"], color="C3", linestyle="--", linewidth=1)
        if marks.height:  # label the largest change only; the table lists them all
            t = marks.sort(pl.col("delta").abs(), descending=True).row(0, named=True)
            ax.annotate(f" {t['before']:.3g}→{t['after']:.3g}", (t["onset_step"], 1.0),
                        xycoords=("data", "axes fraction"), fontsize=7, color="C3", va="top", ha="left")
        ax.set_title(_label(kind, axis), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="lower right")
    return fig


def metric_curves(metrics: pl.DataFrame, warmup: int = 0, max_panels: int = 12) -> Figure:
    """One panel per RL metric: the schema's core metrics, then those that vary, then the rest;
    steps 1..``warmup`` (a supervised warm-up) shaded."""
    spread = metrics.group_by("metric").agg((pl.col("value").max() - pl.col("value").min()).alias("range"))
    ranked = sorted(spread.iter_rows(), key=lambda r: (r[0] not in RL_KEYS, not (r[1] or 0) > 0, r[0]))
    names = [r[0] for r in ranked]
    if not names:
        return _empty("no RL metrics logged")
    shown = names[:max_panels]
    note = None
    if len(names) > len(shown):
        note = f"{len(shown)} of {len(names)} metrics (all are in the rl_metrics table)"
    fig, axes = _grid(len(shown), ncols=4, height=2.1, title=note)
    for ax, name in zip(axes, shown):
        f = _thin(metrics.filter(pl.col("metric") == name).sort("step"))
        ax.plot(f["step"].to_numpy(), f["value"].to_numpy(), color="C2", linewidth=0.9)
        if warmup:
            ax.axvspan(0, warmup, color="0.85", zorder=0, label="supervised warm-up")
        ax.set_title(_txt(name), fontsize=9, pad=11)  # room for a "1e-8" offset label
        ax.tick_params(labelsize=7)
    if warmup:
        axes[0].legend(fontsize=7, loc="best")
    return fig


#: Heat-map values and the adjusted p-value behind their stars (None: no valid p, no stars).
_HEATMAP = {
    "r0": ("r0_p_adj", "same-step r of the prewhitened series (one AR filter per pair)"),
    "diff_pearson_r": ("diff_pearson_p_adj", "Pearson r of first differences"),
    "diff_spearman_r": ("diff_spearman_p_adj", "Spearman r of first differences"),
    "lag_r": ("pair_p_adj", "prewhitened r at the reported lag"),
    "pearson_r": (None, "Pearson r of levels"),
    "spearman_r": (None, "Spearman r of levels"),
}


def correlation_heatmap(correlations: pl.DataFrame, value: str = "r0") -> Figure:
    """Metrics × axes coloured by ``value``; * marks BH-adjusted p < 0.05 across the run's pairs.

    The default is the same-step correlation of the two series after one common AR
    prewhitening filter (``r0``, p from Bartlett's variance). Level correlations
    (``pearson_r``, ``spearman_r``) get no stars: their p-values are not valid for
    autocorrelated series. Metrics listed in another's ``aliases`` have no row of their own.
    """
    correlations = correlations.filter(pl.col(value).is_not_null() & pl.col(value).is_not_nan())
    if correlations.is_empty():
        return _empty("no correlations (no reward axis or no RL metric varies)")
    p_col, what = _HEATMAP.get(value, (value[:-2] + "_p_adj" if value.endswith("_r") else None, value))
    if p_col is not None and p_col not in correlations.columns:
        p_col = None
    axes_names = sorted(correlations["axis"].unique().to_list())
    metric_names = sorted(correlations["metric"].unique().to_list())
    grid = np.full((len(metric_names), len(axes_names)), np.nan)
    sig = np.zeros_like(grid, dtype=bool)
    for r in correlations.iter_rows(named=True):
        i, j = metric_names.index(r["metric"]), axes_names.index(r["axis"])
        grid[i, j] = np.nan if r[value] is None else r[value]
        sig[i, j] = p_col is not None and r.get(p_col) is not None and r[p_col] < 0.05
    fig = Figure(figsize=(min(_WIDTH, 2.5 + 1.1 * len(axes_names)), 1.6 + 0.35 * len(metric_names)),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(axes_names)), [_txt(a) for a in axes_names], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(metric_names)), [_txt(m) for m in metric_names], fontsize=8)
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}{'*' if sig[i, j] else ''}", ha="center", va="center", fontsize=7)
    stars = ("* BH-adjusted p < 0.05 across the run's pairs" if p_col is not None
             else "no stars: level p-values of autocorrelated series are not valid")
    ax.set_title(_txt(f"{what};\n{stars}"), fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8, label=value)
    return fig


_RELATION_TEXT = {"lead": "metric leads", "lag": "axis leads", "same_step": "same step"}


def lead_lag_plot(xcorr: pl.DataFrame, correlations: pl.DataFrame, top: int = 6) -> Figure:
    """The prewhitened cross-correlation r(k) against lag (steps) for up to ``top`` pairs.

    Findings come first (``relation`` lead, lag or same_step: BH-adjusted pair test < 0.05 and
    |r| >= 0.1), each marked at its reported lag and labelled with its relation; the rest of the
    panel is filled with the strongest non-findings, dashed. Aliases have no curve of their own.
    """
    if "relation" not in correlations.columns:
        correlations = correlations.with_columns(relation=pl.lit("none"))
    ranked = (correlations.drop_nulls("lag_r")
              .with_columns(_finding=pl.col("relation").is_in(list(_RELATION_TEXT)))
              .sort(["_finding", "lag_p_adj", pl.col("lag_r").abs()], descending=[True, False, True],
                    nulls_last=True))
    if ranked.is_empty():
        return _empty("no lagged correlations")
    fig = Figure(figsize=(_WIDTH, 4.0))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.93)
    ax = fig.subplots()
    drawn: list[np.ndarray] = []
    for r in ranked.iter_rows(named=True):
        f = xcorr.filter((pl.col("axis") == r["axis"]) & (pl.col("metric") == r["metric"])
                         & (pl.col("kind") == r["kind"])).sort("lag")
        curve = f["r"].to_numpy().astype(float)
        if any(len(c) == len(curve) and np.allclose(c, curve, equal_nan=True) for c in drawn):
            continue
        i = len(drawn)
        drawn.append(curve)
        found = r["_finding"]
        if found:
            ci = (f", CI {r['lag_ci_lo']:+d}..{r['lag_ci_hi']:+d}"
                  if r.get("lag_ci_lo") is not None and r.get("lag_ci_hi") is not None else "")
            text = f"{r['metric']} → {r['axis']}: {_RELATION_TEXT[r['relation']]} ({r['best_lag']:+d}{ci}), r={r['lag_r']:.2f}"
        else:
            text = f"{r['metric']} → {r['axis']}: no finding (peak {r['best_lag']:+d}, r={r['lag_r']:.2f})"
        ax.plot(f["lag"].to_numpy(), curve, marker=".", color=f"C{i}", linestyle="-" if found else "--",
                alpha=1.0 if found else 0.6, label=_txt(text))
        if found:
            ax.plot([r["best_lag"]], [r["lag_r"]], marker="o", markersize=9, color=f"C{i}", fillstyle="none")
        if len(drawn) == top:
            break
    ax.axvline(0, color="0.5", linewidth=0.8)
    ax.axhline(0, color="0.5", linewidth=0.8)
    for level in (-0.1, 0.1):  # below |r| = 0.1 nothing is called a finding
        ax.axhline(level, color="0.7", linewidth=0.6, linestyle=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("lag k in steps (k > 0: the metric's changes precede the axis's by k steps)")
    ax.set_ylabel("r(k) = corr(e_metric[t], e_axis[t+k])")
    ax.set_title("prewhitened cross-correlation (one AR filter per pair); o = reported lag of a finding",
                 fontsize=8)
    ax.legend(fontsize=7, loc="best")
    return fig


def task_curves(task_fitness: pl.DataFrame) -> Figure:
    """Per axis, the EMA of each task."""
    series = task_fitness.partition_by(["kind", "axis"], as_dict=True, maintain_order=True)
    if not series:
        return _empty("no per-task values")
    keys, note = _panels(list(series))
    fig, axes = _grid(len(keys), title=note)
    for ax, ((kind, axis), frame) in zip(axes, [(k, series[k]) for k in keys]):
        for i, ((task,), f) in enumerate(sorted(frame.partition_by(["task_id"], as_dict=True).items(),
                                                key=lambda kv: str(kv[0][0]))):
            f = _thin(f.sort("step"))
            ax.plot(f["step"].to_numpy(), f["ema"].to_numpy(), color=f"C{i % 10}", linewidth=1.4,
                    label=_txt(task))
        ax.set_title(_label(kind, axis), fontsize=10)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="best")
    return fig


def eval_vs_train(fitness: pl.DataFrame, evals: pl.DataFrame) -> Figure:
    """Each eval metric (by split) against the training EMA of the same reward axis."""
    names = sorted(evals["axis"].unique().to_list())
    if not names:
        return _empty("no eval records")
    keys, note = _panels([("reward", name) for name in names], what="eval metrics")
    fig, axes = _grid(len(keys), title=note)
    for ax, name in zip(axes, [k[1] for k in keys]):
        train = _thin(fitness.filter((pl.col("kind") == "reward") & (pl.col("axis") == name)).sort("step"))
        if not train.is_empty():
            ax.plot(train["step"].to_numpy(), train["ema"].to_numpy(), color="C0", label="train EMA")
        for i, ((split,), f) in enumerate(sorted(evals.filter(pl.col("axis") == name)
                                                 .partition_by(["split"], as_dict=True).items())):
            f = f.sort("step")
            ax.plot(f["step"].to_numpy(), f["value"].to_numpy(), marker="o", linestyle="-",
                    color=f"C{i + 1}", label=_txt(f"eval: {split}"))
        ax.set_title(_txt(name), fontsize=10)
        ax.legend(fontsize=7, loc="best")
        ax.tick_params(labelsize=7)
    return fig


_PHASE_COLOURS = {"memorisation": "#fde0c5", "plateau": "#eeeeee", "transition": "#c7e9c0"}


def grokking_curves(evals: pl.DataFrame, metrics: pl.DataFrame, summary, axis: str = "correctness") -> Figure:
    """Train vs test eval curves with the phases shaded, and the weight norm below."""
    curves = evals.filter(pl.col("axis") == axis)
    if curves.is_empty():
        return _empty(f"no eval records of {axis}")
    norm = metrics.filter(pl.col("metric") == "diag/weight_norm").sort("step")
    fig, axes = _grid(2 if not norm.is_empty() else 1, ncols=1, height=2.8)
    ax = axes[0]
    last = int(curves["step"].max())
    phases = [("memorisation", 0, summary.memorisation_step)]
    if summary.status == "generalised":  # a rise that never reached the threshold is no transition
        phases += [("plateau", summary.memorisation_step, summary.rise_start_step),
                   ("transition", summary.rise_start_step, summary.rise_end_step)]
    for name, start, end in phases:
        if start is not None and end is not None and end > start:
            for a in axes:
                a.axvspan(start, end, color=_PHASE_COLOURS[name], zorder=0, label=name if a is ax else None)
    for i, ((split,), f) in enumerate(sorted(curves.partition_by(["split"], as_dict=True).items())):
        f = f.sort("step")
        ax.plot(f["step"].to_numpy(), f["value"].to_numpy(), marker=".", color=f"C{i}", label=_txt(f"{split}"))
    ax.axhline(summary.threshold, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, last)
    ax.set_title(_txt(f"{axis}: eval by split (threshold {summary.threshold})"), fontsize=10)
    ax.legend(fontsize=7, loc="best")
    if not norm.is_empty():
        axes[1].plot(norm["step"].to_numpy(), norm["value"].to_numpy(), color="C3")
        axes[1].set_title("weight L2 norm", fontsize=10)
        axes[1].set_xlim(0, last)
    for a in axes:
        a.tick_params(labelsize=7)
    return fig
