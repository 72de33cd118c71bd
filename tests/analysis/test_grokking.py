"""Grokking-step extraction on synthetic eval curves, checked by hand."""

import importlib.util
import json
import math
import re
from pathlib import Path

import polars as pl
import pytest

from analysis.grokking import GrokkingSummary, compare_runs, grokking_summary, rise_window, wilson_bounds

ROOT = Path(__file__).resolve().parents[2]
Z99 = 2.3263478740408408  # one-sided 99% normal quantile


def evals(train, test, axis="correctness", n=64):
    """Rows of both splits; ``n`` the eval size of every row (None: not logged)."""
    rows = [{"step": s, "split": "train", "n": n, "axis": axis, "value": v} for s, v in train]
    rows += [{"step": s, "split": "test", "n": n, "axis": axis, "value": v} for s, v in test]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "split": pl.Utf8, "n": pl.Int64, "axis": pl.Utf8,
                                      "value": pl.Float64})


def wilson_lower_by_hand(hits, n, z=Z99):
    p = hits / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def test_wilson_bounds_by_hand_and_against_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    # 11/11: lower = n / (n + z^2) = 11 / 16.412
    assert wilson_bounds(11, 11)[0] == pytest.approx(11 / (11 + Z99 ** 2)) == pytest.approx(0.6703, abs=1e-4)
    for hits, n in ((33, 33), (55, 55), (176.64, 192), (9, 11), (32, 64)):
        lo, hi = wilson_bounds(hits, n)
        assert lo == pytest.approx(wilson_lower_by_hand(hits, n))
        ref = proportion_confint(round(hits), n, alpha=0.02, method="wilson")  # two-sided 98% = one-sided 99%
        if hits == round(hits):
            assert (lo, hi) == pytest.approx(ref)


def test_memorise_then_generalise():
    steps = [100 * k for k in range(1, 11)]
    train = [0.2, 0.95, 1, 1, 1, 1, 1, 1, 1, 1]
    test = [0.0, 0.05, 0.05, 0.05, 0.1, 0.5, 0.92, 1.0, 1.0, 1.0]
    s = grokking_summary(evals(zip(steps, train), zip(steps, test), n=64), threshold=0.9)
    assert s.status == "generalised" and s.rule == "wilson99_pooled_k3" and s.test_n == 64
    # train from 200: (0.95 + 1 + 1) * 64 = 188.8 of 192 -> lower 0.945 >= 0.9 after 3 evals (step 400);
    # the last earlier eval confidently below 0.9 is 100 (0.2 of 64: upper 0.36)
    assert wilson_lower_by_hand(188.8, 192) == pytest.approx(0.945, abs=1e-3)
    assert (s.memorisation_step, s.memorisation_ci) == (200, [100, 400])
    # test from 700: (0.92 + 1 + 1) * 64 = 186.88 of 192 -> lower 0.931 at step 900; 600 (0.5) is below
    assert wilson_lower_by_hand(186.88, 192) == pytest.approx(0.931, abs=1e-3)
    assert (s.generalisation_step, s.generalisation_ci) == (700, [600, 900])
    assert (s.delay, s.delay_ci) == (500, [600 - 400, 900 - 100])
    # rise 0 -> 1: 10% reached at 500 (0.1), 90% at 700 (0.92)
    assert (s.rise_start_step, s.rise_end_step, s.transition_steps) == (500, 700, 200)
    assert s.final_test == 1.0
    assert set(GrokkingSummary.__dataclass_fields__) <= set(s.to_dict())


def test_a_stretch_just_above_the_threshold_with_n_64_is_not_confident():
    """0.92 three times with n = 64: pooled 176.64/192, lower bound 0.862 < 0.9; the old rule called 200."""
    steps = [100 * k for k in range(1, 9)]
    test = [0.5, 0.92, 0.92, 0.92, 0.84, 0.86, 0.84, 0.85]
    assert wilson_lower_by_hand(0.92 * 192, 192) == pytest.approx(0.862, abs=1e-3)
    s = grokking_summary(evals([(100, 1.0)], zip(steps, test), n=64))
    assert s.status == "generalisation_unconfirmed"
    assert s.generalisation_step is None and s.generalisation_ci is None and s.delay is None
    # without n the same curve falls back to 3 consecutive evals, and says so
    s = grokking_summary(evals([(100, 1.0)], zip(steps, test), n=None))
    assert s.rule == "consecutive_k3 (n not logged)" and s.test_n is None
    assert (s.status, s.generalisation_step, s.generalisation_ci) == ("generalised", 200, [100, 400])


def test_plateau_at_084_with_n_64_is_not_called():
    """A noisy plateau at 0.84 (binomial draws, n = 64) that touches 0.9 now and then."""
    import numpy as np

    rng = np.random.default_rng(7)
    steps = list(range(50, 5001, 50))
    values = rng.binomial(64, 0.84, size=len(steps)) / 64
    assert values.max() >= 0.9  # the old rule (first eval >= 0.9) would have called it
    s = grokking_summary(evals([(50, 1.0)], zip(steps, values.tolist()), n=64))
    assert s.status == "generalisation_unconfirmed" and s.generalisation_step is None


def test_tiny_split_needs_five_perfect_evals():
    """n = 11: 33/33 has a 99% lower bound of 0.859, 55/55 of 0.910, so 5 perfect evals in a row."""
    assert wilson_lower_by_hand(33, 33) < 0.9 <= wilson_lower_by_hand(55, 55)
    steps = [10 * k for k in range(1, 11)]
    three = [3 / 11, 1, 1, 1, 8 / 11, 3 / 11, 4 / 11, 3 / 11, 2 / 11, 3 / 11]
    s = grokking_summary(evals([(10, 1.0)], zip(steps, three), n=11))
    assert s.status == "generalisation_unconfirmed"
    five = [3 / 11, 9 / 11, 1, 1, 1, 1, 1, 10 / 11, 1, 1]
    s = grokking_summary(evals([(10, 1.0)], zip(steps, five), n=11))
    # 9/11 has upper bound 0.958 (not confidently below); 3/11 at step 10 is (upper 0.60)
    assert (s.status, s.generalisation_step, s.generalisation_ci) == ("generalised", 30, [10, 70])


def test_memorised_only_and_missing_data():
    s = grokking_summary(evals([(1, 1.0), (2, 1.0), (3, 1.0)], [(1, 0.3), (2, 0.4)]))
    assert s.status == "memorised_only" and s.generalisation_step is None and s.delay is None
    assert s.memorisation_step == 1 and s.memorisation_ci == [0, 3]  # nothing earlier was below: lo = 0
    assert grokking_summary(evals([], [])).status == "no_evals"
    assert grokking_summary(evals([(1, 0.5)], [])).status == "no_test_split"
    # a frame without an n column at all (older callers) falls back too
    frame = evals([(1, 1.0)], [(s, 1.0) for s in (1, 2, 3)]).drop("n")
    assert grokking_summary(frame).rule == "consecutive_k3 (n not logged)"


def test_rise_window_flat_curve_has_none():
    assert rise_window([1, 2, 3], [0.5, 0.5, 0.4]) == (None, None)


def called_at(step):
    """A run whose test split is called generalised at ``step`` (n = 64)."""
    return grokking_summary(evals([(1, 1.0), (2, 1.0), (3, 1.0)],
                                  [(1, 0.0)] + [(step + i, 1.0) for i in range(4)]))


def test_compare_runs_groups_by_the_option_that_differs():
    no_evals = grokking_summary(evals([], []))
    summaries = {"a": called_at(100), "b": called_at(300), "c": called_at(1000), "d": no_evals,
                 "e": called_at(700)}
    configs = {"a": {"weight_decay": 1.0, "seed": 0}, "b": {"weight_decay": 1.0, "seed": 1},
               "c": {"weight_decay": 0.1, "seed": 0}, "d": {"weight_decay": 1.0, "seed": 2},
               "e": {"weight_decay": 1.0, "seed": 3}}
    table = compare_runs(summaries, configs)
    assert table.columns == ["group", "runs", "generalised", "mean_steps", "std_steps", "min_steps", "max_steps",
                             "no_evals"]
    row = table.filter(pl.col("group") == "weight_decay=1.0").row(0, named=True)
    # 100, 300, 700: mean 366.67; sample variance ((266.67)^2 + (66.67)^2 + (333.33)^2) / 2 = 93333.3
    assert (row["runs"], row["generalised"], row["no_evals"]) == (3, 3, 1)
    assert row["mean_steps"] == pytest.approx(1100 / 3)
    assert row["std_steps"] == pytest.approx(math.sqrt(93333.33), rel=1e-6) == pytest.approx(305.5, abs=0.1)
    other = table.filter(pl.col("group") == "weight_decay=0.1").row(0, named=True)
    assert (other["runs"], other["min_steps"], other["std_steps"], other["no_evals"]) == (1, 1000, None, 0)


def _steps(count, seed=0):
    """Step records with noisy rewards (the grouping tests are not about transitions)."""
    import numpy as np

    from tests.analysis.synth import step_record

    rng = np.random.default_rng(seed)
    return [step_record(s, [{"correctness": float(v)} for v in rng.uniform(0, 1, 4)]) for s in range(1, count + 1)]


def _write_run(path, config, seed, grok_at=None):
    from tests.analysis.synth import eval_record, run_record, write_log

    record = run_record(seed=seed)
    record["config"] = config
    records = [record] + _steps(30, seed)
    if grok_at is not None:
        records += [eval_record(s, {"correctness": 1.0}, split="train", n=64) for s in range(2, 31, 2)]
        records += [eval_record(s, {"correctness": float(s >= grok_at)}, split="test", n=64) for s in range(2, 31, 2)]
    write_log(path, records)


def test_analyze_groups_runs_by_their_first_run_record_config(tmp_path):
    from analysis import analyze_runs

    runs = tmp_path / "runs"
    _write_run(runs / "wd1_s0" / "train.jsonl", {"lr": 1e-5, "weight_decay": 1.0, "seed": 0}, 0, grok_at=10)
    _write_run(runs / "wd1_s1" / "train.jsonl", {"lr": 1e-5, "weight_decay": 1.0, "seed": 1}, 1, grok_at=20)
    _write_run(runs / "wd01" / "train.jsonl", {"lr": 1e-5, "weight_decay": 0.1, "seed": 0}, 0, grok_at=14)
    _write_run(runs / "wd01_noeval" / "train.jsonl", {"lr": 1e-5, "weight_decay": 0.1, "seed": 1}, 1)
    index = analyze_runs(runs, tmp_path / "out")
    page = index.read_text()
    assert "all runs" not in page
    flat = re.findall(r"<td[^>]*>(.*?)</td>", page)

    def row(label):
        i = flat.index(label)
        return flat[i:i + 8]

    # group, runs, generalised, mean, std, min, max, no evals; std of 10 and 20 (ddof 1) = 7.07
    wd1 = row("weight_decay=1.0")
    assert wd1[1:3] == ["2", "2"] and wd1[-1] == "0" and wd1[5:7] == ["10", "20"]
    assert float(wd1[4]) == pytest.approx(math.sqrt(50), abs=0.01)
    wd01 = row("weight_decay=0.1")
    assert wd01[1:3] == ["1", "1"] and wd01[-1] == "1" and wd01[5] == "14"
    summary = json.loads((tmp_path / "out" / "wd1_s0" / "summary.json").read_text())
    assert summary["grokking"]["generalisation_step"] == 10 and summary["grokking"]["generalisation_ci"] == [8, 14]


def test_report_has_grokking_section_and_says_why_when_missing(tmp_path):
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


def test_analyze_ingests_once_and_the_rewritten_log_note_reaches_the_index(tmp_path):
    from click.testing import CliRunner

    from rg_tracer.cli import cli
    from tests.analysis.synth import run_record, write_log

    log = tmp_path / "runs" / "r" / "train.jsonl"
    write_log(log, [run_record()] + _steps(10))
    args = ["analyze", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert first.output.count("r: 11 new line(s)") == 1  # printed once: one ingest
    write_log(log, [run_record(seed=5)] + _steps(5, seed=1))
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert second.output.count("log was rewritten") == 1
    index = (tmp_path / "rep" / "index.html").read_text()
    assert "the log was rewritten, so it was read again from the start" in index


def _calibration():
    spec = importlib.util.spec_from_file_location("calibrate_grokking", ROOT / "benchmarks" / "calibrate_grokking.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_small():
    """40 seeds of benchmarks/calibrate_grokking.py: the plateau is rarely called, the crossing is found."""
    rows = {(r["case"], r["what"]): r["value"] for r in _calibration().calibrate(seeds=40)}
    assert rows[("(a) plateau 0.84, n=64", "called generalised")] <= 0.1
    assert rows[("(a) plateau 0.84, n=64", "old rule (first eval >= 0.9) called generalised")] >= 0.5
    assert rows[("(c) plateau 0.84, n=11", "called generalised")] <= 0.1
    for case in ("(b) crossing to 0.98, n=64", "(c) crossing to 0.98, n=11"):
        assert rows[(case, "power (called generalised)")] >= 0.9
        assert abs(rows[(case, "median error of the called step (steps; evals every 50)")]) <= 200
        assert rows[(case, "interval holds the true crossing")] >= 0.8
