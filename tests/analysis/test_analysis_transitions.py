"""Changes against known truth: planted jumps and phases are found where they are; noise, drift and
wobble give none; bad input gives a reason, never an exception."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from analysis.noise_model import fit_noise
from analysis.transitions import BAI_95, analyse_series, changes_tables, detect_transitions

STEPS = np.arange(1, 401)


def _samples(mu, rng, m=16, sd=0.2):
    draws = np.asarray(mu)[:, None] + rng.normal(0, sd, (len(mu), m))
    return draws.mean(1), np.full(len(mu), m), draws.std(1, ddof=1)


def test_clean_step_is_one_jump_at_its_step():
    y = np.where(STEPS >= 150, 1.0, 0.0) + np.random.default_rng(0).normal(0, 0.01, len(STEPS))
    (t,) = detect_transitions(STEPS, y)
    assert (t.shape, t.onset_step, t.end_step) == ("jump", 150, 150)
    assert t.before == pytest.approx(0.0, abs=0.01) and t.after == pytest.approx(1.0, abs=0.01)
    assert t.onset_lo <= 150 <= t.end_hi and t.p_value < 1e-6 and t.size > 50


def test_noisy_jump_with_logged_noise_and_its_interval():
    rng = np.random.default_rng(1)
    mean, n, std = _samples(np.where(STEPS >= 200, 0.6, 0.5), rng)  # 2 step SDs (0.05)
    (t,) = detect_transitions(STEPS, mean, n=n, std=std)
    assert t.shape == "jump" and abs(t.onset_step - 200) <= 3
    assert t.size == pytest.approx(2.0, abs=0.6)
    half = BAI_95 * 0.05**2 / 0.1**2  # Bai's 95% interval: +- 11 sigma^2 / delta^2
    assert t.end_hi - t.onset_lo == pytest.approx(2 * half, abs=3)


def test_null_families_rarely_report_anything():
    """White noise, a random walk and AR(1) phi 0.9 (no change at all): 30 series, at most 2 false calls
    (the calibration's rate is ~2-6% per series; this seed set gives 1)."""
    false = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        walk = 0.5 + np.cumsum(rng.normal(0, 0.025, len(STEPS)))
        ar = np.zeros(len(STEPS))
        for t in range(1, len(STEPS)):
            ar[t] = 0.9 * ar[t - 1] + rng.normal(0, 0.1 * np.sqrt(1 - 0.81))
        for mu in (np.full(len(STEPS), 0.5), walk, 0.5 + ar):
            mean, n, std = _samples(mu, rng)
            false += bool(detect_transitions(STEPS, mean, n=n, std=std))
    assert false <= 2


def test_a_ramp_is_not_a_staircase_and_a_sigmoid_is_one_phase():
    rng = np.random.default_rng(2)
    mean, n, std = _samples(0.2 + 0.6 * STEPS / 400, rng)  # a whole-run ramp: no jump, at most one phase
    got = detect_transitions(STEPS, mean, n=n, std=std)
    assert [t.shape for t in got] in ([], ["phase"])
    mean, n, std = _samples(0.2 + 0.4 / (1 + np.exp(-(STEPS - 200) / 10)), rng)
    (t,) = detect_transitions(STEPS, mean, n=n, std=std)
    # 10% and 90% of a logistic with scale 10 lie at 200 -+ 22
    assert t.shape == "phase" and 170 <= t.onset_step <= 190 and 210 <= t.end_step <= 230
    assert t.onset_lo <= t.onset_step and t.end_step <= t.end_hi
    assert t.before == pytest.approx(0.2, abs=0.03) and t.after == pytest.approx(0.6, abs=0.03)


def test_binomial_decay_is_one_phase_not_stairs():
    """A proportion decaying to 0: loud early, silent late. One phase, no jumps in the quiet tail."""
    rng = np.random.default_rng(3)
    p = 0.6 * np.exp(-STEPS / 30)
    draws = (rng.random((len(STEPS), 64)) < p[:, None]).astype(float)
    got = detect_transitions(STEPS, draws.mean(1), n=np.full(len(STEPS), 64), std=draws.std(1, ddof=1))
    assert [t.shape for t in got] == ["phase"] and got[0].delta < 0


def test_up_then_down_and_sparse_steps():
    rng = np.random.default_rng(4)
    y = np.where((STEPS >= 100) & (STEPS < 300), 1.0, 0.0) + rng.normal(0, 0.1, len(STEPS))
    y[5] = np.nan
    got = detect_transitions(STEPS * 10, y)  # logged every 10 steps
    assert [(t.shape, t.onset_step, t.delta > 0) for t in got] == [("jump", 1000, True), ("jump", 3000, False)]


def test_long_series_is_binned_then_placed_on_raw_steps():
    rng = np.random.default_rng(5)
    steps = np.arange(1, 60_001)
    y = np.where(steps >= 31_234, 0.7, 0.3) + rng.normal(0, 0.1, len(steps))
    (t,) = detect_transitions(steps, y)
    assert t.shape == "jump" and abs(t.onset_step - 31_234) <= 5


def test_noise_model_recovers_its_parts():
    rng = np.random.default_rng(6)
    white = rng.normal(0, 0.1, 4000)
    assert fit_noise(white).s == pytest.approx(0.01, rel=0.1) and fit_noise(white).q < 1e-4
    walk = np.cumsum(rng.normal(0, 0.05, 4000)) + white
    assert fit_noise(walk).q == pytest.approx(0.0025, rel=0.3)


@pytest.mark.parametrize("values, reason", [
    ([], "no values"),
    ([np.nan] * 50, "no values"),
    ([0.3] * 50, "constant"),
    ([0.0, 1.0, 1.0], "too short"),
])
def test_bad_series_get_a_reason_not_an_exception(values, reason):
    found = analyse_series(np.arange(len(values)), values)
    assert found.transitions == [] and found.reason.startswith(reason)


def test_one_sample_per_step_and_gaps_work():
    rng = np.random.default_rng(7)
    y = np.where(STEPS >= 200, 1.0, 0.0) + rng.normal(0, 0.1, len(STEPS))
    steps = STEPS.copy()
    steps[100:150] += 1000  # a gap in the step numbers
    n, std = np.ones(len(STEPS)), [None] * len(STEPS)  # n = 1: no std logged
    (t,) = detect_transitions(steps, y, n=n, std=std)
    assert t.shape == "jump" and t.onset_step == steps[199]


def test_tables_per_series_with_notes():
    rng = np.random.default_rng(8)
    fit = pl.concat([
        pl.DataFrame({"run_id": "r", "kind": "reward", "axis": "jump", "step": STEPS,
                      "mean": np.where(STEPS >= 80, 1.0, 0.0) + rng.normal(0, 0.01, len(STEPS))}),
        pl.DataFrame({"run_id": "r", "kind": "reward", "axis": "flat", "step": STEPS, "mean": np.ones(len(STEPS))}),
    ])
    table, notes = changes_tables(fit)
    assert table.select("axis", "onset_step", "shape").rows() == [("jump", 80, "jump")]
    assert table.columns[:8] == ["run_id", "kind", "axis", "onset_step", "end_step", "before", "after", "delta"]
    assert notes.rows() == [("r", "reward", "flat", "constant")]
