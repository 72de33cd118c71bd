"""Grokking-step extraction on synthetic eval curves, checked by hand."""

import polars as pl
import pytest

from analysis.grokking import compare_runs, grokking_summary, rise_window


def evals(train, test, axis="correctness"):
    rows = [{"step": s, "split": "train", "axis": axis, "value": v} for s, v in train]
    rows += [{"step": s, "split": "test", "axis": axis, "value": v} for s, v in test]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "split": pl.Utf8, "axis": pl.Utf8, "value": pl.Float64})


def test_memorise_then_generalise():
    steps = [100 * k for k in range(1, 11)]
    train = [0.2, 0.95, 1, 1, 1, 1, 1, 1, 1, 1]
    test = [0.0, 0.05, 0.05, 0.05, 0.1, 0.5, 0.92, 1.0, 1.0, 1.0]
    s = grokking_summary(evals(zip(steps, train), zip(steps, test)), threshold=0.9)
    assert s.status == "generalised"
    assert (s.memorisation_step, s.generalisation_step, s.delay) == (200, 700, 500)
    # rise 0 -> 1: 10% reached at 500 (0.1), 90% at 700 (0.92)
    assert (s.rise_start_step, s.rise_end_step, s.transition_steps) == (500, 700, 200)
    assert s.final_test == 1.0


def test_memorised_only_and_missing_data():
    s = grokking_summary(evals([(1, 1.0)], [(1, 0.3), (2, 0.4)]))
    assert s.status == "memorised_only" and s.generalisation_step is None and s.delay is None
    assert grokking_summary(evals([], [])).status == "no_evals"
    assert grokking_summary(evals([(1, 0.5)], [])).status == "no_test_split"


def test_rise_window_flat_curve_has_none():
    assert rise_window([1, 2, 3], [0.5, 0.5, 0.4]) == (None, None)


def test_compare_runs_groups_by_the_option_that_differs():
    def s(step):
        return grokking_summary(evals([(1, 1.0)], [(1, 0.0), (step, 1.0)]))

    summaries = {"a": s(100), "b": s(300), "c": s(1000)}
    configs = {"a": {"weight_decay": 1.0, "seed": 0}, "b": {"weight_decay": 1.0, "seed": 1},
               "c": {"weight_decay": 0.1, "seed": 0}}
    table = compare_runs(summaries, configs)
    row = table.filter(pl.col("group") == "weight_decay=1.0").row(0, named=True)
    assert row["runs"] == 2 and row["mean_steps"] == pytest.approx(200.0) and row["std_steps"] == pytest.approx(100.0)
    assert table.filter(pl.col("group") == "weight_decay=0.1")["min_steps"].to_list() == [1000]


def test_report_has_grokking_section_and_says_why_when_missing(tmp_path):
    import json

    from click.testing import CliRunner

    from rg_tracer.cli import cli
    from tests.analysis.synth import run_record, step_record, write_log

    records = [run_record()] + [step_record(s, [{"correctness": float(s > 15)}] * 4) for s in range(1, 31)]
    write_log(tmp_path / "runs" / "noeval" / "train.jsonl", records)
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "rep" / "noeval" / "summary.json").read_text())
    assert summary["grokking"]["status"] == "no_evals"
    page = (tmp_path / "rep" / "noeval" / "index.html").read_text()
    assert "Grokking" in page and "--eval-every" in page
