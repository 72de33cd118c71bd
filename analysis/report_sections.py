"""The HTML sections of a run page, each from a :class:`~analysis.run_summary.RunReport`.

Render only: warnings, findings, the axes, correlation and lead tables, the samples around
transitions and the grokking section, each a piece of HTML that :func:`analysis.report.write_run_page`
lays out in order; :func:`_figure` saves a figure next to the page and links it.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from analysis import plots
from analysis._html import esc, href, num, save_png, table
from analysis.findings import axis_key as _axis_key
from analysis.run_summary import RunReport, _grokking

COMPLETION_CHARS = 600


def _warnings_html(summ: dict) -> str:
    if not summ["warnings"]:
        return ""
    items = "".join(f"<li><b>{esc(w['kind'])}</b>: {esc(w['message'])}</li>" for w in summ["warnings"])
    return f'<h2 class="warn">Warnings</h2><ul class="warn">{items}</ul>'


def _findings_html(summ: dict) -> str:
    items = summ["findings"]
    if not items:
        return ('<p class="muted">Nothing in this run stands out from its noise: no axis changed beyond what its '
                "sampling noise, drift and wobble explain, and no RL metric is linked to an axis.</p>")
    lis = "".join(f"<li>{esc(f['text'])}</li>" for f in items)
    return (f"<ol>{lis}</ol>"
            '<p class="muted">Changes are tested against each axis\'s own noise (family-wise 5% per axis); links '
            "between metrics and axes are BH-adjusted over the run's pairs. How often these calls are wrong on "
            "data with known truth: docs/analysis.md, Calibration.</p>")


def _figure(page_dir: Path, rel: str, fig, alt: str) -> str:
    """Save ``fig`` at ``page_dir/rel``; an ``<img>`` pointing at it."""
    save_png(fig, page_dir / rel)
    return f'<img src="{href(rel)}" alt="{esc(alt)}">'


def _drilldown_html(rr: RunReport) -> str:
    if not rr.drilldown:
        return '<p class="muted">no transitions</p>'
    parts = []
    for t, before, after in rr.drilldown:
        where = (f"step {t['onset_step']}" if t["onset_step"] == t["end_step"]
                 else f"steps {t['onset_step']}–{t['end_step']}")
        name = esc(_axis_key(t["kind"], t["axis"]))
        parts.append(f"<h3>{name}: {num(t['before'])} → {num(t['after'])} at {where}</h3>")
        low, high = "lowest on this axis", "highest on this axis"
        labels = (f"before ({low})", f"after ({high})") if t["delta"] > 0 else (f"before ({high})", f"after ({low})")
        for label, frame in zip(labels, (before, after)):
            rows = [
                (r["step"], r["task_id"], r["value"],
                 ("raw", f"<pre>{esc(_clip(r['completion']))}</pre>"))
                for r in frame.iter_rows(named=True)
            ]
            parts.append(f'<p class="muted">{esc(label)}</p>')
            parts.append(table(["step", "task", "value", "completion"], rows, [True, False, True, False]))
    return "".join(parts)


def _transition_notes_html(rr: RunReport) -> str:
    if rr.transition_notes.is_empty():
        return ""
    text = "; ".join(f"{_axis_key(r['kind'], r['axis'])}: {r['reason']}" for r in rr.transition_notes.iter_rows(named=True))
    return f'<p class="muted">Not judged for changes: {esc(text)}.</p>'


def _clip(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= COMPLETION_CHARS else text[:COMPLETION_CHARS] + " …"


def _axes_table(rr: RunReport) -> str:
    rows = []
    for (kind, axis), f in sorted(rr.fitness.partition_by(["kind", "axis"], as_dict=True).items()):
        last = f.sort("step").tail(1).row(0, named=True)
        n_trans = rr.transitions.filter((pl.col("kind") == kind) & (pl.col("axis") == axis)).height
        rows.append((kind, axis, last["step"], last["mean"], last["ema"], last["slope"], n_trans))
    return table(["kind", "axis", "last step", "final mean", "final EMA", "slope", "transitions"], rows,
                 [False, False, True, True, True, True, True])


def _correlation_table(rr: RunReport, limit: int = 25) -> str:
    varies = pl.col("pearson_r").is_not_null() & pl.col("pearson_r").is_not_nan()
    flat = rr.correlations.filter(~varies)
    frame = rr.correlations.filter(varies).sort(["pair_p_adj", "r0_p_adj"], nulls_last=True)
    cols = ["metric", "axis", "n", "relation", "best_lag", "lag_ci_lo", "lag_ci_hi", "lag_r", "pair_p_adj", "r0",
            "r0_p_adj", "diff_pearson_r", "pearson_r", "aliases"]
    rows = [[r[c] for c in cols] for r in frame.head(limit).iter_rows(named=True)]
    html = table(cols, rows, [False, False, True, False] + [True] * 9 + [False])
    if frame.height > limit:
        html += f'<p class="muted">{frame.height - limit} more rows in the <code>correlations</code> table.</p>'
    constant = sorted(set(flat["metric"].to_list()) - set(frame["metric"].to_list()))
    constant_axes = sorted(set(flat["axis"].to_list()) - set(frame["axis"].to_list()))
    if constant or constant_axes:
        left_out = esc(", ".join(constant + constant_axes))
        html += f'<p class="muted">Constant over the run, so left out: {left_out}.</p>'
    return html


def _leads_table(rr: RunReport, per_axis: int = 3) -> str:
    """Per axis, the metrics that significantly move before it (relation ``lead``), with the lag's interval."""
    leads = (rr.correlations.filter((pl.col("relation") == "lead") & (pl.col("pair_p_adj") < 0.05))
             .sort(["axis", "pair_p_adj", pl.col("lag_r").abs()], descending=[False, False, True])
             .group_by("axis", maintain_order=True).head(per_axis))
    if leads.is_empty():
        return '<p class="muted">No RL metric significantly moves before a reward axis.</p>'
    rows = [(r["axis"], r["metric"], r["best_lag"], f"{r['lag_ci_lo']}–{r['lag_ci_hi']}", r["lag_r"], r["pair_p_adj"])
            for r in leads.iter_rows(named=True)]
    return table(["axis", "metric", "leads by (steps)", "95% interval", "r", "p_adj"], rows,
                 [False, False, True, False, True, True])


_GROK_STATUS = {
    "generalised": "the test split is confidently at or above the threshold",
    "generalisation_unconfirmed": "the test split reached the threshold at some eval but is not confidently above "
                                  "it (too few prompts per eval, or not for long enough)",
    "memorised_only": "memorised the train split; the test split has not reached the threshold",
    "not_memorised": "neither split is confidently at or above the threshold",
    "no_evals": "no eval records: train with --eval-every N (and a held-out --eval-dataset) to get this section",
    "no_test_split": "no test-split eval records: pass a held-out --eval-dataset",
}


def _grokking_html(run_dir: Path, rr: RunReport) -> list[str]:
    g = _grokking(rr)
    parts = ["<h2>Grokking</h2>", f'<p class="muted">{esc(_GROK_STATUS[g.status])}.</p>']
    if g.status in ("no_evals", "no_test_split"):
        return parts
    from analysis.grokking import DEFAULT_CONFIDENCE, DEFAULT_K

    def ci(interval: list[int] | None) -> str | None:
        return None if interval is None else f"[{interval[0]}, {interval[1]}]"

    parts.append(table(
        ["axis", "threshold", "memorisation step", "interval", "generalisation step", "interval", "delay",
         "interval", "test n", "test rise 10%→90%", "transition steps", "final train", "final test"],
        [[g.axis, g.threshold, g.memorisation_step, ci(g.memorisation_ci), g.generalisation_step,
          ci(g.generalisation_ci), g.delay, ci(g.delay_ci), g.test_n,
          None if g.rise_start_step is None else f"{g.rise_start_step}→{g.rise_end_step}", g.transition_steps,
          g.final_train, g.final_test]],
        [False] + [True] * 12))
    parts.append(f'<p class="muted">Rule: {esc(g.rule or "")}. A step is the first eval of the earliest stretch '
                 f"of at least {DEFAULT_K} consecutive evals at or above the threshold whose pooled accuracy has a "
                 f"one-sided {100 * DEFAULT_CONFIDENCE:g}% Wilson lower bound at or above it (where the eval size n "
                 f"is not logged: {DEFAULT_K} consecutive evals, no sampling error). Its interval runs from the last "
                 "earlier eval confidently below the threshold (0: none) to the eval at which the bound passed; "
                 "the crossing lies inside it. See docs/grokking.md.</p>")
    parts.append(_figure(run_dir, "grokking.png", plots.grokking_curves(rr.evals, rr.metrics, g), "grokking phases"))
    return parts


def _warmup_html(rr: RunReport) -> str:
    if not rr.warmup:
        return ""
    return (f'<p class="muted">Steps 1–{rr.warmup} are a supervised warm-up (cross-entropy on the reference '
            f"answers, shaded): they sample no completions, so reward axes, transitions, lead/lag and the "
            f"warnings start at step {rr.warmup + 1}, where RL starts.</p>")
