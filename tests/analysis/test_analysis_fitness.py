"""Fitness signals against numbers worked out by hand."""

from __future__ import annotations

import math

import polars as pl
import pytest
from synth import step_record, write_log

from analysis import open_runs
from analysis.fitness import fitness_signals, step_stats

# run r, axis a: step 1 -> [1, 3], step 2 -> [4], step 3 -> [2, 4, 6]; axis flat: always 5
AXES = pl.DataFrame(
    {
        "run_id": ["r"] * 9,
        "kind": ["reward"] * 9,
        "axis": ["a"] * 6 + ["flat"] * 3,
        "step": [1, 1, 2, 3, 3, 3, 1, 2, 3],
        "value": [1.0, 3.0, 4.0, 2.0, 4.0, 6.0, 5.0, 5.0, 5.0],
    }
)


def test_step_stats_by_hand():
    stats = step_stats(AXES).filter(pl.col("axis") == "a")
    assert stats["n"].to_list() == [2, 1, 3]
    assert stats["mean"].to_list() == [2.0, 4.0, 4.0]
    assert stats["std"].to_list()[0] == pytest.approx(math.sqrt(2))  # ddof = 1
    assert stats["std"].to_list()[1] is None  # one sample
    assert stats["std"].to_list()[2] == pytest.approx(2.0)


def test_ema_slope_z_by_hand():
    fit = fitness_signals(step_stats(AXES), span=3, window=2)  # alpha = 2 / (3 + 1) = 0.5
    a = fit.filter(pl.col("axis") == "a")
    assert a["ema"].to_list() == [2.0, 3.0, 3.5]  # 2; .5*4+.5*2; .5*4+.5*3
    assert a["slope"].to_list()[0] is None  # one point
    assert a["slope"].to_list()[1:] == [pytest.approx(2.0), pytest.approx(0.0)]
    # z of means [2, 4, 4]: centre 10/3, std sqrt(4/3)
    assert a["z"].to_list() == pytest.approx([-2 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)])
    flat = fit.filter(pl.col("axis") == "flat")
    assert flat["z"].to_list() == [0.0, 0.0, 0.0]
    assert flat["slope"].to_list()[1:] == [0.0, 0.0]


def test_slope_window_three():
    fit = fitness_signals(step_stats(AXES), window=3).filter(pl.col("axis") == "a")
    # points (1, 2), (2, 4), (3, 4): sum dx*dy = 2, sum dx^2 = 2
    assert fit["slope"].to_list()[2] == pytest.approx(1.0)


def test_groups_do_not_leak():
    two_runs = pl.concat([AXES, AXES.with_columns(run_id=pl.lit("s"), value=pl.col("value") * 10)])
    fit = fitness_signals(step_stats(two_runs), span=3)
    s = fit.filter((pl.col("run_id") == "s") & (pl.col("axis") == "a"))
    assert s["ema"].to_list() == [20.0, 30.0, 35.0]


def test_bad_options():
    with pytest.raises(ValueError, match="window"):
        fitness_signals(step_stats(AXES), window=1)


def test_sql_aggregate_matches_polars(runs_dir):
    samples = [[{"a": v} for v in values] for values in ([1.0, 3.0], [4.0], [2.0, 4.0, 6.0])]
    write_log(runs_dir / "r" / "train.jsonl", [step_record(s, samples[s - 1]) for s in (1, 2, 3)])
    with open_runs(runs_dir) as runs:
        sql = runs.step_stats()
        frame = step_stats(runs.axes())
        task = runs.fitness(by_task=True)
    for col in ("step", "n", "mean"):
        assert sql[col].to_list() == pytest.approx(frame[col].to_list())
    assert sql["std"].fill_null(-1).to_list() == pytest.approx(frame["std"].fill_null(-1).to_list())
    assert sql["mean"].to_list() == [2.0, 4.0, 4.0]
    assert task["task_id"].unique().to_list() == ["addition"]
