"""Correlations, lagged cross-correlation and BH, by hand and against scipy."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from analysis.correlations import (
    ar_fit,
    ar_residuals,
    bh_adjust,
    correlate,
    lagged_xcorr,
    lead_lag,
    pearson,
    spearman,
)

X = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
Y = np.array([2.0, 4.0, 5.0, 4.0, 5.0])


def test_pearson_by_hand():
    r, p, n = pearson(X, Y)
    assert n == 5
    assert r == pytest.approx(6 / math.sqrt(60))  # sum dxdy = 6, sum dx^2 = 10, sum dy^2 = 6
    assert p == pytest.approx(stats.pearsonr(X, Y).pvalue)


def test_spearman_by_hand():
    rho, p = spearman(X, Y)
    assert rho == pytest.approx(7 / math.sqrt(90))  # ranks of Y: 1, 2.5, 4.5, 2.5, 4.5
    assert p == pytest.approx(stats.spearmanr(X, Y).pvalue)


def test_missing_and_constant_series():
    r, p, n = pearson(np.array([1.0, np.nan, 3.0, 4.0, 5.0]), Y)
    assert n == 4 and r == pytest.approx(stats.pearsonr([1, 3, 4, 5], [2, 5, 4, 5]).statistic)
    assert np.isnan(pearson(X, np.ones(5))[0])
    assert np.isnan(spearman(X, np.ones(5))[0])


def test_bh_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 0.01*3/1, 0.03*3/2, 0.04*3/3 = 0.03, 0.045, 0.04 -> running min from the top
    got = bh_adjust(np.array([0.01, 0.04, 0.03, np.nan]))
    assert got[:3] == pytest.approx([0.03, 0.04, 0.04])
    assert np.isnan(got[3])


def test_lagged_xcorr_finds_the_shift():
    rng = np.random.default_rng(0)
    metric = rng.normal(size=200)
    axis = np.concatenate([rng.normal(size=3), metric[:-3]])  # axis[t] = metric[t - 3]
    xc = lagged_xcorr(metric, axis, 5)
    assert xc["lag"].to_list() == list(range(-5, 6))
    best = xc.sort(pl.col("r").abs(), descending=True).row(0, named=True)
    assert best["lag"] == 3 and best["r"] == pytest.approx(1.0) and best["n"] == 197


def _frames(metric: np.ndarray, axis: np.ndarray):
    steps = np.arange(1, len(axis) + 1)
    fit = pl.DataFrame({"run_id": "r", "kind": "reward", "axis": "quality", "step": steps, "mean": axis})
    metrics = pl.concat([
        pl.DataFrame({"run_id": "r", "step": steps, "metric": "grad_norm", "value": metric}),
        pl.DataFrame({"run_id": "r", "step": steps, "metric": "reward_mean/quality", "value": axis}),
        pl.DataFrame({"run_id": "r", "step": steps, "metric": "safety_reward_ema/quality", "value": axis}),
        pl.DataFrame({"run_id": "r", "step": steps, "metric": "lr", "value": np.full(len(axis), 1e-5)}),
    ])
    return fit, metrics


@pytest.mark.parametrize("lead", [3, -2])
def test_best_lag_sign_convention(lead):
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(size=400))
    metric, axis = (walk[10:310], walk[10 - lead:310 - lead])  # axis[t] = metric[t - lead]
    corr, xcorr = correlate(*_frames(metric, axis), max_lag=6)
    assert corr["metric"].to_list() == ["grad_norm", "lr"]  # aggregates of the axes are excluded
    g = corr.filter(pl.col("metric") == "grad_norm").row(0, named=True)
    assert g["best_lag"] == lead  # > 0: the metric's changes come first
    assert g["lag_r"] > 0.95  # (each series is prewhitened by its own AR fit)
    assert g["lag_p_adj"] < 1e-6
    assert corr.filter(pl.col("metric") == "lr")["best_lag"].to_list() == [None]  # constant: no lag
    assert xcorr.filter(pl.col("metric") == "grad_norm").height == 13
    summary = lead_lag(corr, "r")
    assert summary[0] == {"metric": "grad_norm", "axis": "quality", "best_lag": lead,
                          "corr": pytest.approx(1.0, abs=0.05), "p_adj": pytest.approx(0.0, abs=1e-6)}


def test_gaps_are_not_bridged():
    from analysis.correlations import _dense

    steps = np.array([1, 2, 3, 5, 6, 7, 8, 9])  # step 4 missing
    frame = pl.DataFrame({"step": steps, "metric": "kl", "value": np.arange(8.0)})
    dense = _dense(frame, "metric", "value", 1, 9)["kl"]
    assert np.isnan(dense[3]) and dense[4] == 3.0  # aligned on step numbers, not positions
    # 8 differences of steps 1..9, minus the 2 that touch step 4
    assert pearson(np.diff(dense), np.diff(dense) ** 2)[2] == 6


def test_ar_fit_recovers_an_ar2_and_residuals_by_hand():
    rng = np.random.default_rng(2)
    x = np.zeros(5000)
    for t in range(2, len(x)):
        x[t] = 0.6 * x[t - 1] - 0.3 * x[t - 2] + rng.normal()
    coefs = ar_fit(x)
    assert coefs[:2] == pytest.approx([0.6, -0.3], abs=0.05)
    assert np.abs(coefs[2:]).max(initial=0) < 0.06
    got = ar_residuals(np.array([1.0, 2.0, 4.0, np.nan, 3.0, 5.0]), np.array([0.5]))
    assert np.isnan(got[0]) and got[1:3].tolist() == [1.5, 3.0]  # 2 - .5*1, 4 - .5*2
    assert np.isnan(got[3]) and np.isnan(got[4]) and got[5] == 3.5  # the gap spoils two residuals


def test_prewhitening_removes_the_differencing_artefact():
    """Noise that moves together at k = 0 only: plain differences fake r(+-1) = r(0) / -2."""
    rng = np.random.default_rng(3)
    common = rng.normal(size=3000)
    metric, axis = common + rng.normal(size=3000), common + rng.normal(size=3000)
    fake = lagged_xcorr(np.diff(metric), np.diff(axis), 1)["r"].to_list()
    assert fake[2] == pytest.approx(-fake[1] / 2, abs=0.05)  # the artefact is there
    corr, _ = correlate(*_frames(metric, axis), max_lag=3)
    g = corr.filter(pl.col("metric") == "grad_norm").row(0, named=True)
    assert g["best_lag"] == 0
    assert g["lead_p_adj"] > 0.05  # and no lead survives prewhitening
