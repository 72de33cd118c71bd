"""Correlations, lead/lag (common-filter prewhitening, pair test, bootstrap) and BH.

By hand and against scipy where there is a formula; against planted truth (leads, same-step
couplings, aliases, sparse metrics, independent nulls) where there is a method.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from analysis.correlation_stats import bh_adjust, lagged_xcorr, pearson, spearman
from analysis.correlations import DEFAULT_MAX_LAG, correlate, lead_lag
from analysis.lead_lag_test import MIN_R
from analysis.prewhitening import ar_fit, ar_residuals

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


def _frames(metric: np.ndarray, axis: np.ndarray, extra: dict | None = None):
    steps = np.arange(1, len(axis) + 1)
    fit = pl.DataFrame({"run_id": "r", "kind": "reward", "axis": "quality", "step": steps, "mean": axis})
    metrics = pl.concat([
        pl.DataFrame({"run_id": "r", "step": steps, "metric": "grad_norm", "value": metric}),
        pl.DataFrame({"run_id": "r", "step": steps, "metric": "reward_mean/quality", "value": axis}),
        pl.DataFrame({"run_id": "r", "step": steps, "metric": "safety_reward_ema/quality", "value": axis}),
        pl.DataFrame({"run_id": "r", "step": steps, "metric": "lr", "value": np.full(len(axis), 1e-5)}),
        *[pl.DataFrame({"run_id": "r", "step": st, "metric": name, "value": v}, schema_overrides={"step": pl.Int64})
          for name, (st, v) in (extra or {}).items()],
    ])
    return fit, metrics


def _ar1(rng, n: int, phi: float) -> np.ndarray:
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi * phi)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def _row(corr: pl.DataFrame, metric: str = "grad_norm") -> dict:
    return corr.filter(pl.col("metric") == metric).row(0, named=True)


@pytest.mark.parametrize("lead", [3, -2])
def test_best_lag_sign_convention(lead):
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(size=400))
    metric, axis = (walk[10:310], walk[10 - lead:310 - lead])  # axis[t] = metric[t - lead]
    corr, xcorr = correlate(*_frames(metric, axis), max_lag=6)
    assert corr["metric"].to_list() == ["grad_norm", "lr"]  # aggregates of the axes are excluded
    g = _row(corr)
    assert g["best_lag"] == lead  # > 0: the metric's changes come first
    assert g["relation"] == ("lead" if lead > 0 else "lag")
    assert g["lag_r"] > 0.95  # both series go through one AR filter, so the copy stays exact
    assert g["lag_p_adj"] == g["pair_p_adj"] < 1e-6
    assert g["lag_ci_lo"] <= lead <= g["lag_ci_hi"]
    assert (g["lead_p_adj"] is not None) == (lead > 0)
    assert corr.filter(pl.col("metric") == "lr")["best_lag"].to_list() == [None]  # constant: no lag
    assert xcorr.filter(pl.col("metric") == "grad_norm").height == 13
    summary = lead_lag(corr, "r")
    assert summary == [{"metric": "grad_norm", "axis": "quality", "best_lag": lead,
                        "corr": pytest.approx(1.0, abs=0.05), "p_adj": pytest.approx(0.0, abs=1e-6),
                        "relation": "lead" if lead > 0 else "lag", "lag_ci": [lead, lead],
                        "r0": pytest.approx(g["r0"]), "aliases": [], "every": 1, "n": 300}]


def test_gaps_are_not_bridged():
    from analysis.step_series import _dense

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
    corr, xcorr = correlate(*_frames(metric, axis), max_lag=3)
    g = _row(corr)
    assert g["best_lag"] == 0 and g["relation"] == "same_step"
    assert g["lag_r"] == g["r0"] == pytest.approx(0.5, abs=0.05)
    assert g["lead_p_adj"] is None  # no lead survives prewhitening
    side = xcorr.filter((pl.col("metric") == "grad_norm") & (pl.col("lag").abs() == 1))["r"].to_numpy()
    assert np.abs(side).max() < 0.05


def test_same_step_coupling_with_different_ar_filters_is_not_a_lead():
    """The case that broke: AR(0.9) metric, AR(0.3) noise on the axis, coupled at the same step.

    Separate (Haugh) filters leak r(0) into r(+1); one common filter does not.
    """
    rng = np.random.default_rng(4)
    metric = _ar1(rng, 1500, 0.9)
    axis = 0.5 * metric + _ar1(rng, 1500, 0.3)
    own = lagged_xcorr(ar_residuals(metric, ar_fit(metric)), ar_residuals(axis, ar_fit(axis)), 1)["r"].to_numpy()
    assert own[2] - own[0] > 0.1  # separate filters: r(+1) well above r(-1), a fake "lead"
    corr, xcorr = correlate(*_frames(metric, axis))
    g = _row(corr)
    assert g["relation"] == "same_step" and g["best_lag"] == 0
    assert g["lead_p_adj"] is None and g["pair_p_adj"] < 1e-6
    assert g["lag_ci_lo"] <= 0 <= g["lag_ci_hi"]
    near = dict(xcorr.filter((pl.col("metric") == "grad_norm") & (pl.col("lag").abs() <= 1))
                .select("lag", "r").iter_rows())
    assert abs(near[1] - near[-1]) < 0.06 and near[0] > 0.3


def test_planted_lead_is_a_lead_with_a_lag_interval():
    rng = np.random.default_rng(5)
    latent = _ar1(rng, 700, 0.8)
    metric = latent[50:650]
    axis = 0.35 * latent[45:645] + _ar1(rng, 600, 0.5)  # axis[t] = 0.35 metric[t - 5] + AR noise
    corr, xcorr = correlate(*_frames(metric, axis))
    g = _row(corr)
    assert (g["relation"], g["best_lag"]) == ("lead", 5)
    assert g["lag_ci_lo"] <= 5 <= g["lag_ci_hi"] and g["lag_ci_lo"] > 0
    assert g["pair_p_adj"] < 1e-6 and g["lead_p_adj"] == g["pair_p_adj"] == g["lag_p_adj"]
    assert abs(g["lag_r"]) >= MIN_R and abs(g["r0"]) < 0.15
    lags = xcorr.filter(pl.col("metric") == "grad_norm")
    assert lags["lag"].to_list() == list(range(-DEFAULT_MAX_LAG, DEFAULT_MAX_LAG + 1))
    # Benjamini-Bogomolov: lag-level p_adj only inside a selected pair; the planted lag is significant
    assert lags.filter(pl.col("lag") == 5)["p_adj"][0] < 0.05


def test_default_max_lag_finds_a_lead_of_20_steps():
    rng = np.random.default_rng(6)
    latent = _ar1(rng, 700, 0.8)
    metric, axis = latent[50:650], 0.4 * latent[30:630] + _ar1(rng, 600, 0.5)
    g = _row(correlate(*_frames(metric, axis))[0])
    assert DEFAULT_MAX_LAG >= 20 and (g["relation"], g["best_lag"]) == ("lead", 20)


def test_aliases_are_collapsed():
    rng = np.random.default_rng(7)
    latent = _ar1(rng, 700, 0.8)
    metric, axis = latent[50:650], 0.4 * latent[47:647] + _ar1(rng, 600, 0.5)
    steps = np.arange(1, 601)
    kl = np.cumsum(rng.normal(size=600))
    extra = {"kl": (steps, kl), "kl/value": (steps, kl.copy()), "loss/kl": (steps, (np.float32(0.1) * kl.astype(np.float32)).astype(float) + 2.0),  # float32, as logged
             "grad_norm/total": (steps, metric.copy()), "neg_kl": (steps, -kl)}
    corr, xcorr = correlate(*_frames(metric, axis, extra))
    assert sorted(corr["metric"].to_list()) == ["grad_norm", "kl", "lr", "neg_kl"]  # tested once each
    assert set(_row(corr, "kl")["aliases"].split(",")) == {"kl/value", "loss/kl"}
    assert _row(corr)["aliases"] == "grad_norm/total" and _row(corr, "neg_kl")["aliases"] == ""
    assert set(xcorr["metric"].unique().to_list()) == {"grad_norm", "kl", "neg_kl"}
    by_metric = {e["metric"]: e for e in lead_lag(corr, "r")}
    assert by_metric["grad_norm"]["aliases"] == ["grad_norm/total"] and by_metric["grad_norm"]["relation"] == "lead"
    assert sorted(by_metric["kl"]["aliases"]) == ["kl/value", "loss/kl"]


def test_sparse_metric_is_analysed_on_its_own_grid():
    rng = np.random.default_rng(9)
    latent = _ar1(rng, 1200, 0.95)
    steps = np.arange(1, 1001)
    metric, axis = latent[100:1100], 0.3 * latent[80:1080] + _ar1(rng, 1000, 0.5)  # lead of 20 steps
    every5 = steps % 5 == 0
    extra = {"diag/weight_norm": (steps[every5], metric[every5])}
    corr, xcorr = correlate(*_frames(rng.normal(size=1000), axis, extra))
    g = _row(corr, "diag/weight_norm")
    assert g["every"] == 5 and g["n"] == 200  # on the metric's 200 steps, not dropped as "constant"
    assert (g["relation"], g["best_lag"]) == ("lead", 20)  # lags in steps
    assert g["lag_ci_lo"] % 5 == 0 and g["lag_ci_lo"] <= 20 <= g["lag_ci_hi"]
    lags = xcorr.filter(pl.col("metric") == "diag/weight_norm")["lag"].to_list()
    assert lags == list(range(-25, 26, 5))
    assert _row(corr)["every"] == 1 and _row(corr)["relation"] == "none"  # white noise metric


def test_levels_have_no_p_values_and_differences_are_bartlett_corrected():
    rng = np.random.default_rng(9)
    metric, axis = _ar1(rng, 800, 0.5), _ar1(rng, 800, 0.5)
    g = _row(correlate(*_frames(metric, axis))[0])
    assert g["pearson_r"] is not None and g["spearman_r"] is not None
    assert all(g[c] is None for c in ("pearson_p", "spearman_p", "pearson_p_adj", "spearman_p_adj"))
    plain = pearson(np.diff(metric), np.diff(axis))[1]
    # differences of AR(0.5) series have lag-1 autocorrelation -0.25 each: Bartlett's factor > 1
    assert g["diff_pearson_p"] > plain
    assert g["r0_p"] is not None and g["r0_p_adj"] is not None


def _null(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "walk":
        return np.cumsum(rng.normal(size=400)), np.cumsum(rng.normal(size=400))
    if kind == "ar":
        return _ar1(rng, 400, 0.9), _ar1(rng, 400, 0.9)
    return rng.normal(size=400), rng.normal(size=400)


@pytest.mark.parametrize("kind", ["white", "walk", "ar"])
def test_independent_nulls_are_rarely_findings(kind):
    found, r0_small = 0, 0
    for seed in range(20):
        corr, _ = correlate(*_frames(*_null(kind, 100 + seed)))
        g = _row(corr)
        found += g["relation"] != "none"
        r0_small += g["r0_p"] < 0.05
        assert (g["pair_p_adj"] < 0.05) == (g["relation"] != "none")
    assert found <= 1
    assert r0_small <= 4  # the same-step p behind the heat-map stars: ~5% of 20


@pytest.mark.parametrize("case", ["short", "constant", "all_null", "gaps", "one_step", "nan_axis"])
def test_bad_input_gives_no_finding_and_no_exception(case):
    rng = np.random.default_rng(10)
    n = {"short": 6, "one_step": 1}.get(case, 300)
    metric, axis = rng.normal(size=n), rng.normal(size=n)
    fit, metrics = _frames(metric, axis)
    if case == "constant":
        fit = fit.with_columns(mean=pl.lit(0.5))
    elif case == "all_null":
        metrics = metrics.with_columns(value=pl.lit(None, pl.Float64))
    elif case == "gaps":
        keep = rng.random(n) < 0.6
        fit = fit.filter(pl.Series(keep))
        metrics = metrics.filter(pl.col("step").is_in(np.flatnonzero(keep[::-1]) + 1))
    elif case == "nan_axis":
        fit = fit.with_columns(mean=pl.when(pl.col("step") % 3 == 0).then(float("nan")).otherwise(pl.col("mean")))
    corr, xcorr = correlate(fit, metrics)
    assert set(corr["relation"].drop_nulls().to_list()) <= {"none"}
    assert all(e["p_adj"] is None or e["p_adj"] >= 0.05 for e in lead_lag(corr, "r"))
    assert set(xcorr.columns) == {"run_id", "kind", "axis", "metric", "lag", "r", "p", "n", "p_adj"}


def test_empty_input():
    fit, metrics = _frames(np.zeros(0), np.zeros(0))
    corr, xcorr = correlate(fit, metrics)
    assert corr.is_empty() and xcorr.is_empty() and "relation" in corr.columns
    assert lead_lag(corr, "r") == []


def test_small_calibration():
    """A few seeds of benchmarks/calibrate_leadlag.py, targets asserted loosely."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from calibrate_leadlag import calibrate

    rows = {(r["family"], r["what"]): r["rate"] for r in calibrate(seeds=4, length=400)}
    for (family, what), rate in rows.items():
        if what == "runs with any lead/lag finding":
            assert rate <= 0.25, family
        elif what.startswith(("found as lead", "found as lag")):
            assert rate >= 0.75, family
        elif what == "called a lead or lag":
            assert rate == 0.0, family
        elif what == "false-discovery proportion (mean)":
            assert rate <= 0.1
        elif what == "runs with an alias group tested twice":
            assert rate == 0.0
        elif what == "level Pearson p reported and < 0.05":
            assert rate == 0.0  # no level p-values at all


def test_summary_marks_findings_consistently():
    """p_adj < 0.05 if and only if a relation is reported; findings come first."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from calibrate_leadlag import multi_frames

    (fit, metrics), truth, _ = multi_frames(400, (5, 11))
    corr, xcorr = correlate(fit, metrics)
    summary = lead_lag(corr, "r")
    flags = [e["relation"] != "none" for e in summary]
    assert flags == sorted(flags, reverse=True) and any(flags)
    for e in summary:
        assert (e["p_adj"] < 0.05) == (e["relation"] != "none")
        assert {"metric", "axis", "best_lag", "corr", "p_adj", "relation", "lag_ci", "r0", "aliases",
                "every", "n"} <= set(e)
        if e["relation"] in ("lead", "lag"):
            assert (e["best_lag"] > 0) == (e["relation"] == "lead") and e["lag_ci"] is not None
        if e["relation"] == "same_step":
            assert e["best_lag"] == 0
    found = {(e["axis"], e["metric"]): (e["relation"], e["best_lag"]) for e in summary if e["relation"] != "none"}
    assert found == truth
    selected = corr.filter(pl.col("relation") != "none").select("axis", "metric")
    with_adj = xcorr.filter(pl.col("p_adj").is_not_null()).select("axis", "metric").unique()
    assert sorted(with_adj.rows()) == sorted(selected.rows())  # lag-level p_adj only in selected pairs


def test_plots_render_the_new_tables():
    from analysis import plots

    rng = np.random.default_rng(12)
    latent = _ar1(rng, 700, 0.8)
    metric, axis = latent[50:650], 0.4 * latent[46:646] + _ar1(rng, 600, 0.5)
    steps = np.arange(1, 601)
    same = axis - 0.4 * latent[46:646] + rng.normal(size=600)  # moves with the axis's noise, same step
    corr, xcorr = correlate(*_frames(metric, axis, {"entropy": (steps, same)}))
    assert _row(corr, "entropy")["relation"] == "same_step"
    heat = plots.correlation_heatmap(corr)
    texts = {t.get_text() for t in heat.axes[0].texts}
    assert any(t.endswith("*") for t in texts) and not all(t.endswith("*") for t in texts)
    assert "prewhitened" in heat.axes[0].get_title()
    level = plots.correlation_heatmap(corr, value="pearson_r")
    assert not any(t.get_text().endswith("*") for t in level.axes[0].texts)  # no stars on levels
    fig = plots.lead_lag_plot(xcorr, corr)
    ax = fig.axes[0]
    assert "Δ" not in ax.get_ylabel() and "e_metric" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("metric leads (+4" in t for t in labels) and any("same step (+0" in t for t in labels)
