"""Render the report: ``index.html``, ``<run_id>/index.html`` and ``summary.json``.

Render only: every number here was computed by :mod:`analysis.fitness`,
:mod:`analysis.correlations` and :mod:`analysis.transitions`; this module
lays them out. A run page's ``summary.json`` object is built by
:mod:`analysis.run_summary` (documented in ``docs/analysis.md``), its HTML
sections by :mod:`analysis.report_sections`; this module writes the pages.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from analysis import plots, run_comparison_plots
from analysis._html import esc, href, page, table
from analysis.grokking import compare_runs as compare_grokking
from analysis.report_sections import (
    _axes_table,
    _correlation_table,
    _drilldown_html,
    _figure,
    _findings_html,
    _grokking_html,
    _leads_table,
    _transition_notes_html,
    _warmup_html,
    _warnings_html,
)
from analysis.run_summary import RunReport, _grokking, summary

__all__ = ["write_run_page", "write_index", "report_path_clash", "RUN_FILES", "INDEX_FILES"]

#: What a run page writes into ``<out>/<run_id>/``, and the index into ``<out>/``.
RUN_FILES = ("index.html", "summary.json", ".report-stamp", "axes.png", "metrics.png", "correlations.png",
             "lead_lag.png", "tasks.png", "eval.png", "grokking.png")
INDEX_FILES = ("index.html", "index_files/compare.png", "index_files/generalisation.png")


def report_path_clash(run_ids: list[str]) -> str | None:
    """A one-line description of two runs (or a run and the index) whose report paths collide, or None.

    Run ids are paths: run ``a`` writes ``a/index.html``, which run ``a/index.html`` needs as a directory.
    """
    owner: dict[str, str] = {f: "the index page" for f in INDEX_FILES}
    for run_id in run_ids:
        owner.update({f"{run_id}/{f}": repr(run_id) for f in RUN_FILES})
    for run_id in run_ids:
        parts = run_id.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix in owner:
                return (f"runs {owner[prefix]} and {run_id!r} collide in the report: {prefix} is a file of the first "
                        "and a directory of the second")
    return None


#: written beside each run page: which report (its ``--out``) the page belongs to
PAGE_MARK = ".rg-tracer-report.json"


def foreign_page(out: Path, run_ids: list[str]) -> str | None:
    """A one-line description of a run page under ``out`` that another report wrote (e.g. the
    demo's ``reports/demo/dapo/`` when ``runs/`` is reported into ``reports/``), or None.
    Rewriting it would change what the other report's links show."""
    mine = str(out.resolve())
    for run_id in run_ids:
        mark = out / run_id / PAGE_MARK
        try:
            owner = json.loads(mark.read_text(encoding="utf-8")).get("report")
        except (OSError, ValueError, AttributeError):
            continue
        if owner and owner != mine:
            return (f"{out / run_id} holds a page of the report in {owner}; reporting run {run_id!r} here would "
                    "overwrite it: choose another --out (e.g. reports/all) or delete that directory")
    return None


def write_run_page(out: Path, rr: RunReport) -> Path:
    """Write ``out/<run_id>/index.html``, its PNGs and ``summary.json``."""
    run_dir = out / rr.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PAGE_MARK).write_text(json.dumps({"report": str(out.resolve()), "run_id": rr.run_id}), encoding="utf-8")
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
        body.append('<p class="muted">No sampled completions (no steps yet, supervised warm-up steps only, or a log '
                    "that keeps step metrics only, e.g. TRL without log_completions=True): no per-axis curves, "
                    "transitions, correlations or lead/lag. The step metrics the log holds are below.</p>")
        if not rr.metrics.is_empty():
            body += ["<h2>RL metrics</h2>", _warmup_html(rr),
                     _figure(run_dir, "metrics.png", plots.metric_curves(rr.metrics, rr.warmup), "RL metrics")]
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
            _figure(out, "index_files/generalisation.png", run_comparison_plots.generalisation_steps(groups),
                    "steps to generalise")]


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
                 _figure(out, "index_files/compare.png", run_comparison_plots.compare_runs(fitness), "runs compared")]
    body += _grokking_comparison(out, reports, configs or {})
    path = out / "index.html"
    path.write_text(page("rg-tracer runs", "".join(body)), encoding="utf-8")
    return path
