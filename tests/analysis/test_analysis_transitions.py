"""Change points: planted changes are found where they are; flat or noise gives none."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from analysis.transitions import Transition, detect_transitions, transitions_table

STEPS = np.arange(1, 241)


def test_clean_step_is_exact():
    y = np.where(STEPS >= 50, 1.0, 0.0)
    assert detect_transitions(STEPS, y) == [Transition(50, 50, 0.0, 1.0)]


def test_noisy_step_within_a_step():
    rng = np.random.default_rng(0)
    y = np.where(STEPS >= 120, 0.8, 0.2) + rng.normal(0, 0.05, len(STEPS))
    (t,) = detect_transitions(STEPS, y)
    assert abs(t.onset_step - 120) <= 1 and t.end_step == t.onset_step
    assert t.before == pytest.approx(0.2, abs=0.02) and t.after == pytest.approx(0.8, abs=0.02)
    assert t.delta == pytest.approx(0.6, abs=0.03)


@pytest.mark.parametrize("seed", range(8))
def test_white_noise_has_no_transition(seed):
    rng = np.random.default_rng(seed)
    assert detect_transitions(STEPS, rng.normal(0.5, 0.1, len(STEPS))) == []
    assert detect_transitions(np.arange(5000), rng.normal(0.0, 1.0, 5000)) == []  # binned


def test_constant_and_short_series():
    assert detect_transitions(STEPS, np.full(len(STEPS), 0.3)) == []
    assert detect_transitions([1, 2, 3], [0.0, 1.0, 1.0]) == []


def test_ramp_is_one_transition_with_onset_and_end():
    rng = np.random.default_rng(2)
    y = np.clip((STEPS - 100) / 40, 0, 1) + rng.normal(0, 0.02, len(STEPS))
    (t,) = detect_transitions(STEPS, y)
    assert 100 <= t.onset_step <= 112 and 128 <= t.end_step <= 140  # 10% and 90% of the rise
    assert t.before == pytest.approx(0.0, abs=0.05) and t.after == pytest.approx(1.0, abs=0.05)


def test_up_then_down_and_gaps():
    rng = np.random.default_rng(3)
    steps = STEPS * 10  # logged every 10 steps
    y = np.where((STEPS >= 60) & (STEPS < 180), 1.0, 0.0) + rng.normal(0, 0.05, len(STEPS))
    y[5] = np.nan
    got = detect_transitions(steps, y)
    assert [(t.onset_step, t.delta > 0) for t in got] == [(600, True), (1800, False)]


def test_long_series_is_binned_then_refined():
    rng = np.random.default_rng(4)
    steps = np.arange(1, 60_001)
    y = np.where(steps >= 31_234, 0.7, 0.3) + rng.normal(0, 0.1, len(steps))
    (t,) = detect_transitions(steps, y)
    assert abs(t.onset_step - 31_234) <= 5


def test_table_per_series():
    rng = np.random.default_rng(5)
    fit = pl.concat([
        pl.DataFrame({"run_id": "r", "kind": "reward", "axis": "jump", "step": STEPS,
                      "mean": np.where(STEPS >= 80, 1.0, 0.0) + rng.normal(0, 0.01, len(STEPS))}),
        pl.DataFrame({"run_id": "r", "kind": "reward", "axis": "flat", "step": STEPS, "mean": np.ones(len(STEPS))}),
    ])
    table = transitions_table(fit)
    assert table.select("axis", "onset_step").rows() == [("jump", 80)]
    assert table.columns == ["run_id", "kind", "axis", "onset_step", "end_step", "before", "after", "delta"]


@pytest.mark.parametrize("seed", range(3))
def test_fast_pelt_equals_ruptures_l2_pelt(seed):
    import ruptures as rpt

    from analysis.transitions import _pelt

    rng = np.random.default_rng(seed)
    y = np.repeat(rng.normal(0, 1, 6), 40) + rng.normal(0, 0.5, 240)
    for pen in (0.5, 2.0, 8.0):
        expected = rpt.Pelt(model="l2", min_size=5, jump=1).fit(y).predict(pen=pen)[:-1]
        assert _pelt(y, 5, pen) == expected
