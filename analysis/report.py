"""Render the report: ``index.html``, ``<run_id>/index.html`` and ``summary.json``.

Render only: every number here was computed by :mod:`analysis.fitness`,
:mod:`analysis.correlations` and :mod:`analysis.transitions`; this module
lays them out. ``summary.json`` is documented in ``docs/analysis.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from analysis import plots
from analysis._html import esc, href, num, page, save_png, table
from analysis.correlations import lead_lag
from analysis.findings import axis_key as _axis_key
from analysis.findings import run_findings
from analysis.run_warnings import run_warnings
from analysis.grokking import compare_runs as compare_grokking
from analysis.grokking import GrokkingSummary, grokking_summary

__all__ = ["RunReport", "summary", "write_run_page", "write_index"]

COMPLETION_CHARS = 600
#: eval accuracy that counts as "memorised" (train split) and "generalised" (test split)
GROK_THRESHOLD = 0.9


@dataclass
class RunReport:
    """Everything one run page shows (frames already filtered to the run)."""

    run_id: str
    run: dict
    fitness: pl.DataFrame
    task_fitness: pl.DataFrame
    metrics: pl.DataFrame
    evals: pl.DataFrame
    correlations: pl.DataFrame
    xcorr: pl.DataFrame
    transitions: pl.DataFrame
    transition_notes: pl.DataFrame = field(default_factory=pl.DataFrame)
    truncation: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"step": pl.Int64,
                                                                                 "truncated": pl.Float64}))
    reward_weights: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # of the run's first run record
    drilldown: list[tuple[dict, pl.DataFrame, pl.DataFrame]] = field(default_factory=list)
    grok_threshold: float = GROK_THRESHOLD
    errors: list[dict] = field(default_factory=list)
    cache: dict = field(default_factory=dict, repr=False)  # summary and grokking call, computed once

    @property
    def warmup(self) -> int:
        """Supervised warm-up steps (``sft_steps`` of the run's config): 1..warmup are not RL."""
        value = self.config.get("sft_steps") or 0
        return value if isinstance(value, int) and value > 0 else 0

    @property
    def rl_metrics(self) -> pl.DataFrame:
        """``metrics`` of the RL steps only: a warm-up's cross-entropy and entropy are another regime."""
        return self.metrics.filter(pl.col("step") > self.warmup) if self.warmup else self.metrics


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _transition_dict(t: dict) -> dict:
    return {"onset_step": t["onset_step"], "end_step": t["end_step"], "before": _finite(t["before"]),
            "after": _finite(t["after"]), "shape": t.get("shape"), "size": _finite(t.get("size")),
            "z": _finite(t.get("z")), "p_value": _finite(t.get("p_value")),
            "interval": [t.get("onset_lo"), t.get("end_hi")]}


def _grokking(rr: RunReport) -> GrokkingSummary:
    if "grokking" not in rr.cache:
        rr.cache["grokking"] = grokking_summary(rr.evals, threshold=rr.grok_threshold)
    return rr.cache["grokking"]


def summary(rr: RunReport) -> dict:
    """The ``summary.json`` object of one run (computed once per report)."""
    if "summary" not in rr.cache:
        rr.cache["summary"] = _summary(rr)
    return rr.cache["summary"]


def _summary(rr: RunReport) -> dict:
    axes: dict[str, dict] = {}
    notes = {(r["kind"], r["axis"]): r["reason"] for r in rr.transition_notes.iter_rows(named=True)} \
        if not rr.transition_notes.is_empty() else {}
    for (kind, axis), frame in sorted(rr.fitness.partition_by(["kind", "axis"], as_dict=True).items()):
        last = frame.sort("step").tail(1).row(0, named=True)
        trans = rr.transitions.filter((pl.col("kind") == kind) & (pl.col("axis") == axis)).sort("onset_step")
        axes[_axis_key(kind, axis)] = {
            "kind": kind,
            "final_mean": _finite(last["mean"]),
            "final_ema": _finite(last["ema"]),
            "transitions": [_transition_dict(t) for t in trans.iter_rows(named=True)],
            "transitions_note": notes.get((kind, axis)),
        }
    links = lead_lag(rr.correlations, rr.run_id)
    grokking = _grokking(rr).to_dict()
    return {
        "run_id": rr.run_id,
        "steps": int(rr.run.get("n_steps") or 0),
        "last_step": rr.run.get("last_step"),
        "status": rr.run.get("status"),
        "warnings": _jsonable(run_warnings(rr.fitness, rr.rl_metrics, rr.evals, rr.transitions, rr.truncation,
                                           rr.reward_weights, rr.config.get("max_new_tokens"))),
        "findings": [{k: _jsonable(v) for k, v in f.items()} for f in run_findings(rr.transitions, links, grokking)],
        "axes": axes,
        "lead_lag": links,
        "grokking": grokking,
    }


def _jsonable(value: object) -> object:
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


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


def write_run_page(out: Path, rr: RunReport) -> Path:
    """Write ``out/<run_id>/index.html``, its PNGs and ``summary.json``."""
    run_dir = out / rr.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    summ = summary(rr)
    (run_dir / "summary.json").write_text(json.dumps(summ, indent=2, allow_nan=False), encoding="utf-8")
    up = "../" * (rr.run_id.count("/") + 1)
    run = rr.run
    facts = table(
        ["status", "steps", "first step", "last step", "samples", "segments", "evals", "skipped lines", "log"],
        [[run.get("status"), run.get("n_steps"), run.get("first_step"), run.get("last_step"), run.get("n_samples"),
          run.get("n_segments"), run.get("n_evals"), run.get("bad_lines"), run.get("log_path")]],
        [False] + [True] * 7 + [False],
    )
    body = [f'<nav><a href="{up}index.html">← all runs</a><a href="summary.json">summary.json</a></nav>',
            f"<h1>{esc(rr.run_id)}</h1>", facts, _warnings_html(summ), "<h2>What happened</h2>",
            _findings_html(summ)]
    if rr.errors:
        body.append('<h2 class="warn">Skipped lines</h2>')
        body.append(table(["line", "field", "problem"], [(e["line"], e["field"], e["message"]) for e in rr.errors],
                          [True, False, False]))
    if rr.fitness.is_empty():
        body.append('<p class="muted">No sampled completions yet (no steps, or supervised warm-up steps only).</p>')
    else:
        body += [
            "<h2>Reward axes</h2>", _figure(run_dir, "axes.png", plots.axis_curves(rr.fitness, rr.transitions),
                                              "per-axis curves"),
            _axes_table(rr), "<h2>Transitions</h2>",
            '<p class="muted">jump: abrupt (its duration is within its location uncertainty); phase: gradual, '
            "onset and end at 10% and 90% of the change. size: in noise SDs; interval: 95% for where it "
            "happened; p: family-wise over the axis's scan.</p>",
            table(["kind", "axis", "shape", "onset step", "end step", "interval", "before", "after", "Δ", "size",
                   "p"],
                  [(r["kind"], r["axis"], r["shape"], r["onset_step"], r["end_step"],
                    f"{r['onset_lo']}–{r['end_hi']}", r["before"], r["after"], r["delta"], r["size"], r["p_value"])
                   for r in rr.transitions.iter_rows(named=True)],
                  [False, False, False, True, True, False, True, True, True, True, True]),
            _transition_notes_html(rr),
            "<h2>RL metrics</h2>", _warmup_html(rr),
            _figure(run_dir, "metrics.png", plots.metric_curves(rr.metrics, rr.warmup), "RL metrics"),
            "<h2>Correlations</h2>",
            '<p class="muted">r0: same-step correlation of the prewhitened step means (one AR filter per pair); '
            "* = BH-adjusted p &lt; 0.05. Level correlations (pearson_r) carry no p-value: levels of "
            "autocorrelated series correlate by chance. relation: the pair's finding (lead: the metric moves "
            "first; lag: the axis does; same_step; none), from one test per pair, BH across the run's pairs.</p>",
            _figure(run_dir, "correlations.png", plots.correlation_heatmap(rr.correlations), "correlation heat map"),
            _correlation_table(rr), "<h2>Lead / lag</h2>",
            '<p class="muted">A lead is claimed only when r(k) at the best k &gt; 0 is significantly stronger than '
            "r(−k) and than the same-step r(0) (block bootstrap); metrics that move with an axis in the same step "
            "are listed above as same_step, not here. Metrics that move before each axis (BH-adjusted p &lt; "
            "0.05):</p>", _leads_table(rr),
            _figure(run_dir, "lead_lag.png", plots.lead_lag_plot(rr.xcorr, rr.correlations), "lead/lag"),
            "<h2>Per task</h2>", _figure(run_dir, "tasks.png", plots.task_curves(rr.task_fitness), "per-task curves"),
            "<h2>Eval vs train</h2>",
            _figure(run_dir, "eval.png", plots.eval_vs_train(rr.fitness, rr.evals), "eval against train"),
            "<h2>Samples around transitions</h2>", _drilldown_html(rr),
        ]
    body += _grokking_html(run_dir, rr)
    path = run_dir / "index.html"
    path.write_text(page(f"rg-tracer · {rr.run_id}", "".join(body)), encoding="utf-8")
    return path


def _grokking_comparison(out: Path, reports: list[RunReport], configs: dict[str, dict]) -> list[str]:
    summaries = {rr.run_id: _grokking(rr) for rr in reports}
    if not any(s.status not in ("no_evals", "no_test_split") for s in summaries.values()):
        return []
    groups = compare_grokking(summaries, configs)
    return ["<h2>Steps to generalise across runs</h2>",
            '<p class="muted">Runs grouped by the options of their first run record that differ between them '
            "(seed ignored). runs: runs with test-split evals; generalised: those called generalised (the n of "
            "mean, std and range; std is the sample std, ddof 1); no evals: runs without test-split evals, left "
            "out of the other columns.</p>",
            table(["group", "runs", "generalised", "mean steps", "std", "min", "max", "no evals"],
                  groups.select("group", "runs", "generalised", "mean_steps", "std_steps", "min_steps",
                                "max_steps", "no_evals").rows(),
                  [False] + [True] * 7),
            _figure(out, "index_files/generalisation.png", plots.generalisation_steps(groups), "steps to generalise")]


def write_index(out: Path, reports: list[RunReport], fitness: pl.DataFrame, notes: list[str],
                configs: dict[str, dict] | None = None) -> Path:
    """Write ``out/index.html``: every run, and their reward axes side by side."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rr in reports:
        r, s = rr.run, summary(rr)
        finals = ", ".join(f"{k}={v['final_ema']:.3f}" for k, v in s["axes"].items()
                           if v["kind"] == "reward" and v["final_ema"] is not None)
        top = next((x for x in s["lead_lag"] if x["p_adj"] is not None and x["p_adj"] < 0.05), None)
        relation = {"lead": "metric first", "lag": "axis first", "same_step": "same step"}.get(top.get("relation"), "") \
            if top else ""
        lead = f"{top['metric']} ~ {top['axis']} ({relation}, {top['best_lag']:+d})" if top else ""
        n_trans = sum(len(v["transitions"]) for v in s["axes"].values())
        warned = ", ".join(sorted({w["kind"] for w in s["warnings"]}))
        rows.append([("raw", f'<a href="{href(rr.run_id + "/index.html")}">{esc(rr.run_id)}</a>'), r.get("status"),
                     r.get("n_steps"), r.get("last_step"), r.get("bad_lines"), warned, finals, n_trans, lead])
    body = [f"<h1>rg-tracer runs</h1><p class=\"muted\">{len(reports)} run(s)</p>"]
    body += [f'<p class="warn">{esc(n)}</p>' for n in notes]
    body.append(table(["run", "status", "steps", "last step", "skipped lines", "warnings", "final EMA (rewards)",
                       "changes", "strongest link (lag k; k > 0: metric first)"], rows,
                      [False, False, True, True, True, False, False, True, False]))
    if not fitness.is_empty():
        body += ["<h2>Reward axes across runs (EMA)</h2>",
                 _figure(out, "index_files/compare.png", plots.compare_runs(fitness), "runs compared")]
    body += _grokking_comparison(out, reports, configs or {})
    path = out / "index.html"
    path.write_text(page("rg-tracer runs", "".join(body)), encoding="utf-8")
    return path
