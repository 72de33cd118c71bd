"""Calibration of ``analysis.correlations`` (lead/lag and correlations) on synthetic runs with known truth.

Every family runs ``correlate`` on synthetic ``fitness``/``rl_metrics`` frames, one run per
seed (each family draws from its own random streams), and reports rates against targets:

* null pairs (metric and axis independent: white noise, random walks, AR(1) with phi 0.9,
  a smooth trend in both plus noise): share of runs with any finding (target <= 5%);
* planted leads ``axis[t] = b * metric[t - k] + AR noise`` with an AR(1) metric, k = +3, -5,
  +20 steps: share of runs where the pair is found as a lead (k > 0) or lag (k < 0) at
  exactly k (target >= 90%), and share whose lag interval contains k;
* same-step couplings ``axis[t] = b * metric[t] + noise`` with an AR(1) metric (phi 0.9) and
  AR(1) noise of a different phi (0.3): share called a lead or a lag, as ``relation`` or as a
  significant ``lead_p_adj`` (target 0%), and share found as same_step;
* a sparse metric logged every 5 steps that leads its axis by 20 steps;
* a multi-pair run (2 axes x 11 metrics: 3 true leads, 1 same-step, independent nulls of every
  kind, and aliases of a true and of a null metric): the false-discovery proportion of
  reported pairs (a finding on a null pair, or a true pair found with the wrong relation or
  lag), averaged over seeds (target <= 5%), the power on the true pairs, and how often an
  alias group was reported under more than one name (target 0);
* level and first-difference correlations on null pairs: share of pair tests with p < 0.05
  (no level p-values are reported any more; the difference p is Bartlett-corrected, target
  ~5%), and the same for the prewhitened same-step r0 behind the heat-map stars.

    .venv/bin/python benchmarks/calibrate_leadlag.py [--seeds 50] [--length 400]

``--module PATH`` runs the same families through another copy of ``correlations.py``
(e.g. the previous version), reading its findings as ``lag_p_adj < 0.05`` at ``best_lag``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.correlations import DEFAULT_MAX_LAG, correlate  # noqa: E402 (after the sys.path insert)

__all__ = ["calibrate", "null_frames", "lead_frames", "multi_frames", "speed_frames", "dense_frames",
           "time_correlate"]

_RELATIONS = ("lead", "lag", "same_step")


# ---------------------------------------------------------------------------------------------
# Synthetic series


def ar1(rng: np.random.Generator, n: int, phi: float, sd: float = 1.0) -> np.ndarray:
    """A stationary AR(1) series (started from its stationary distribution)."""
    e = rng.normal(0.0, sd, n)
    x = np.empty(n)
    x[0] = e[0] / np.sqrt(max(1.0 - phi * phi, 1e-3))
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def _shift(x: np.ndarray, k: int, burn: int) -> np.ndarray:
    """``x[t - k]`` for t in burn..burn + n (x has burn extra values on each side)."""
    n = len(x) - 2 * burn
    return x[burn - k : burn - k + n]


def frames(metrics: dict[str, tuple[np.ndarray, np.ndarray] | np.ndarray],
           axes: dict[str, np.ndarray], run_id: str = "r") -> tuple[pl.DataFrame, pl.DataFrame]:
    """``fitness`` and ``rl_metrics`` frames; a metric is its values at steps 1..n, or (steps, values)."""
    fit = []
    for name, values in axes.items():
        steps = np.arange(1, len(values) + 1)
        fit.append(pl.DataFrame({"run_id": run_id, "kind": "reward", "axis": name, "step": steps,
                                 "n": 8, "mean": values, "std": 0.1}))
    met = []
    for name, values in metrics.items():
        steps, values = values if isinstance(values, tuple) else (np.arange(1, len(values) + 1), values)
        met.append(pl.DataFrame({"run_id": run_id, "step": steps.astype(np.int64), "metric": name,
                                 "value": np.asarray(values, dtype=float)}))
    return pl.concat(fit), pl.concat(met)


def null_frames(kind: str, length: int, seed: int | tuple[int, ...]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One independent (metric, axis) pair of ``kind``: white, walk, ar09, trend."""
    rng = np.random.default_rng(seed)
    if kind == "white":
        m, a = rng.normal(size=length), rng.normal(size=length)
    elif kind == "walk":
        m, a = np.cumsum(rng.normal(size=length)), np.cumsum(rng.normal(size=length))
    elif kind == "ar09":
        m, a = ar1(rng, length, 0.9), ar1(rng, length, 0.9)
    elif kind == "trend":
        t = np.arange(length)
        m = 1.0 - np.exp(-t / (0.25 * length)) + 0.1 * rng.normal(size=length)
        a = 0.5 * (1.0 - np.exp(-t / (0.4 * length))) + 0.05 * ar1(rng, length, 0.5)
    else:
        raise ValueError(kind)
    return frames({"grad_norm": m}, {"quality": a})


def lead_frames(k: int, length: int, seed: int | tuple[int, ...], *, b: float = 0.35, phi_m: float = 0.8,
                phi_u: float = 0.5, every: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``axis[t] = b * metric[t - k] + u[t]``: AR(phi_m) metric, AR(phi_u) noise; k = 0 is same-step.

    With ``every`` > 1 the metric is logged only at steps divisible by ``every``.
    """
    rng = np.random.default_rng(seed)
    burn = 64
    latent = ar1(rng, length + 2 * burn, phi_m)
    metric = _shift(latent, 0, burn)
    axis = b * _shift(latent, k, burn) + ar1(rng, length, phi_u)
    if every > 1:
        steps = np.arange(1, length + 1)
        keep = steps % every == 0
        return frames({"grad_norm": (steps[keep], metric[keep])}, {"quality": axis})
    return frames({"grad_norm": metric}, {"quality": axis})


def multi_frames(length: int, seed: int | tuple[int, ...]):
    """2 axes x 11 metric names with known truth: {(axis, metric): (relation, lag)} for true pairs."""
    rng = np.random.default_rng(seed)
    burn = 64
    lat = {name: ar1(rng, length + 2 * burn, 0.8) for name in ("grad_norm", "entropy", "clip_ratio", "kl")}
    cur = {name: _shift(x, 0, burn) for name, x in lat.items()}
    quality = (0.35 * _shift(lat["grad_norm"], 3, burn) + 0.35 * _shift(lat["entropy"], -4, burn)
               + ar1(rng, length, 0.5))
    style = 0.35 * _shift(lat["clip_ratio"], 10, burn) + 0.3 * _shift(lat["kl"], 0, burn) + ar1(rng, length, 0.3)
    metrics = {
        **cur,
        "grad_norm/total": cur["grad_norm"],  # an alias of a true metric
        "loss": np.cumsum(rng.normal(size=length)),  # independent nulls of several kinds
        "loss/total": None,  # alias of loss, filled below
        "policy_loss": ar1(rng, length, 0.9),
        "value_loss": rng.normal(size=length),
        "kl/value": cur["kl"].copy(),  # aliases of kl (identical, and scaled)
        "loss/kl": 0.05 * cur["kl"] + 1.0,
    }
    metrics["loss/total"] = metrics["loss"].copy()
    truth = {("quality", "grad_norm"): ("lead", 3), ("quality", "entropy"): ("lag", -4),
             ("style", "clip_ratio"): ("lead", 10), ("style", "kl"): ("same_step", 0)}
    aliases = [{"grad_norm", "grad_norm/total"}, {"loss", "loss/total"}, {"kl", "kl/value", "loss/kl"}]
    return frames(metrics, {"quality": quality, "style": style}), truth, aliases


def speed_frames(steps: int = 60_000, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A long run: 4 reward axes, 16 metrics (3 alias groups, 2 logged every 10 steps, 2 excluded/constant)."""
    rng = np.random.default_rng(seed)
    s = np.arange(1, steps + 1)
    kl = np.abs(ar1(rng, steps, 0.95, 0.01)) + 0.01
    loss, pol = ar1(rng, steps, 0.5), ar1(rng, steps, 0.3)
    gn = np.exp(0.1 * ar1(rng, steps, 0.98))
    metrics = {"kl": kl, "kl/value": kl, "loss/kl": 0.05 * kl, "loss": loss, "loss/total": loss,
               "policy_loss": pol, "loss/policy": pol, "grad_norm": gn, "clip_ratio": rng.uniform(0, 0.2, steps),
               "entropy": ar1(rng, steps, 0.9), "response_length": 100 + np.cumsum(rng.normal(size=steps)),
               "lr": np.full(steps, 1e-5), "lr_sched": np.linspace(1e-5, 0, steps),
               "reward/mean": rng.normal(size=steps)}
    for name in ("diag/weight_norm", "diag/update_ratio"):
        metrics[name] = (s[s % 10 == 0], np.cumsum(rng.normal(size=steps // 10)))
    axes = {axis: 0.5 + 0.1 * ar1(rng, steps, 0.8) + (0.3 * np.roll(np.log(gn), 3) if i == 0 else 0.0)
            for i, axis in enumerate(("correctness", "format", "style", "length"))}
    return frames(metrics, axes, run_id="big")


# ---------------------------------------------------------------------------------------------
# Reading results (also results of an older correlations.py without ``relation``)


def _findings(corr: pl.DataFrame) -> pl.DataFrame:
    if "relation" not in corr.columns:
        rel = (pl.when(pl.col("lag_p_adj") >= 0.05).then(pl.lit("none"))
               .when(pl.col("best_lag") > 0).then(pl.lit("lead"))
               .when(pl.col("best_lag") < 0).then(pl.lit("lag")).otherwise(pl.lit("same_step")))
        corr = corr.with_columns(relation=pl.when(pl.col("lag_p_adj").is_null()).then(pl.lit("none"))
                                 .otherwise(rel))
    return corr.filter(pl.col("relation").is_in(list(_RELATIONS)))


def _rate(hits: list[bool]) -> float:
    return float(np.mean(hits)) if hits else float("nan")


def calibrate(seeds: int = 50, length: int = 400, correlate_fn: Callable | None = None,
              max_lag: int = DEFAULT_MAX_LAG) -> list[dict]:
    """Rows ``{family, what, rate, target}``, each rate over ``seeds`` synthetic runs."""
    run = correlate_fn or correlate

    def corr_of(fr):
        return run(*fr, max_lag=max_lag)[0]

    rows: list[dict] = []
    for fam, (kind, label) in enumerate((("white", "white noise"), ("walk", "random walks"),
                                         ("ar09", "AR(1) phi 0.9"), ("trend", "smooth trend in both"))):
        hits, level, diff, r0 = [], [], [], []
        for seed in range(seeds):
            corr = corr_of(null_frames(kind, length, (1, fam, seed)))
            hits.append(_findings(corr).height > 0)
            row = corr.row(0, named=True)
            level.append(row["pearson_p"] is not None and row["pearson_p"] < 0.05)
            diff.append(row["diff_pearson_p"] is not None and row["diff_pearson_p"] < 0.05)
            if "r0_p" in row:
                r0.append(row["r0_p"] is not None and row["r0_p"] < 0.05)
        rows.append(dict(family=f"null: {label}", what="runs with any lead/lag finding", rate=_rate(hits),
                         target="<= 0.05"))
        rows.append(dict(family=f"null: {label}", what="level Pearson p reported and < 0.05", rate=_rate(level),
                         target="no level p reported"))
        rows.append(dict(family=f"null: {label}", what="difference Pearson p < 0.05", rate=_rate(diff),
                         target="~0.05"))
        if r0:
            rows.append(dict(family=f"null: {label}", what="prewhitened same-step r0 p < 0.05", rate=_rate(r0),
                             target="~0.05"))
    for k in (3, -5, 20):
        found, in_ci = [], []
        want = "lead" if k > 0 else "lag"
        for seed in range(seeds):
            f = _findings(corr_of(lead_frames(k, length, (2, k + 100, seed))))
            hit = f.filter((pl.col("relation") == want) & (pl.col("best_lag") == k))
            found.append(hit.height == 1)
            if "lag_ci_lo" in f.columns:
                in_ci.append(hit.height == 1 and hit["lag_ci_lo"][0] <= k <= hit["lag_ci_hi"][0])
        rows.append(dict(family=f"planted lead k={k:+d}", what=f"found as {want} at k", rate=_rate(found),
                         target=">= 0.90"))
        if in_ci:
            rows.append(dict(family=f"planted lead k={k:+d}", what="... and the lag CI contains k",
                             rate=_rate(in_ci), target="~0.95"))
    leads, same = [], []
    for seed in range(seeds):
        corr = corr_of(lead_frames(0, length, (3, seed), b=0.4, phi_m=0.9, phi_u=0.3))
        f = _findings(corr)
        # a lead in the relation, or in the lead_* columns the report's "leads" table reads
        leads.append(f.filter(pl.col("relation").is_in(["lead", "lag"])).height > 0
                     or corr.filter(pl.col("lead_p_adj") < 0.05).height > 0)
        same.append(f.filter((pl.col("relation") == "same_step") & (pl.col("best_lag") == 0)).height == 1)
    rows.append(dict(family="same-step coupling (AR 0.9 metric, AR 0.3 noise)", what="called a lead or lag",
                     rate=_rate(leads), target="0"))
    rows.append(dict(family="same-step coupling (AR 0.9 metric, AR 0.3 noise)", what="found as same_step",
                     rate=_rate(same), target="high"))
    sparse = []
    for seed in range(seeds):
        f = _findings(corr_of(lead_frames(20, 2 * length, (4, seed), b=0.3, phi_m=0.95, every=5)))
        sparse.append(f.filter((pl.col("relation") == "lead") & (pl.col("best_lag") == 20)).height == 1)
    rows.append(dict(family=f"sparse metric (every 5 steps, {2 * length} steps), lead +20",
                     what="found as lead at +20 steps", rate=_rate(sparse), target=">= 0.90"))
    fdp, power, dup = [], [], []
    for seed in range(seeds):
        fr, truth, aliases = multi_frames(length, (5, seed))
        corr = corr_of(fr)
        f = _findings(corr)
        false = 0
        for r in f.iter_rows(named=True):
            want = truth.get((r["axis"], r["metric"]))
            if want is None or want != (r["relation"], r["best_lag"]):
                false += 1
        fdp.append(false / max(f.height, 1))
        got = {(r["axis"], r["metric"], r["relation"], r["best_lag"]) for r in f.iter_rows(named=True)}
        power.append(np.mean([(a, m, rel, k) in got for (a, m), (rel, k) in truth.items()]))
        names = set(corr["metric"].to_list())
        dup.append(any(len(group & names) > 1 for group in aliases))
    rows.append(dict(family="multi-pair run (2 axes x 11 metrics, 4 true pairs, aliases)",
                     what="false-discovery proportion (mean)", rate=float(np.mean(fdp)), target="<= 0.05"))
    rows.append(dict(family="multi-pair run (2 axes x 11 metrics, 4 true pairs, aliases)",
                     what="true pairs found (right relation and lag)", rate=float(np.mean(power)), target="high"))
    rows.append(dict(family="multi-pair run (2 axes x 11 metrics, 4 true pairs, aliases)",
                     what="runs with an alias group tested twice", rate=_rate(dup), target="0"))
    return rows


def dense_frames(steps: int = 60_000, seed: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A long run where every pair is a finding (4 axes, each a mix of 12 AR metrics), so every pair is bootstrapped."""
    rng = np.random.default_rng(seed)
    metrics = {f"m{i}": ar1(rng, steps, 0.9) for i in range(12)}
    metrics["m0/alias"] = metrics["m0"]
    axes = {f"a{j}": sum(0.3 * np.roll(metrics[f"m{i}"], (i + j) % 7) for i in range(12)) + ar1(rng, steps, 0.5)
            for j in range(4)}
    return frames(metrics, axes, run_id="dense")


def time_correlate(repeat: int = 3, correlate_fn: Callable | None = None, max_lag: int = DEFAULT_MAX_LAG,
                   which: str = "typical") -> float:
    """Best wall time (s) of ``correlate`` on a 60,000-step run: ``typical`` (:func:`speed_frames`)
    or ``dense`` (:func:`dense_frames`, all 48 pairs findings)."""
    run = correlate_fn or correlate
    fit, met = speed_frames() if which == "typical" else dense_frames()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(fit, met, max_lag=max_lag)
        best = min(best, time.perf_counter() - start)
    return best


def _load(path: str) -> Callable:
    spec = importlib.util.spec_from_file_location("correlations_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.correlate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--length", type=int, default=400)
    parser.add_argument("--max-lag", type=int, default=DEFAULT_MAX_LAG)
    parser.add_argument("--module", help="another correlations.py to calibrate instead")
    parser.add_argument("--speed", action="store_true", help="also time correlate on a 60,000-step run")
    args = parser.parse_args()
    fn = _load(args.module) if args.module else None
    start = time.perf_counter()
    rows = calibrate(args.seeds, args.length, fn, args.max_lag)
    took = time.perf_counter() - start
    print("| family | what | rate | target |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['what']} | {r['rate']:.3f} | {r['target']} |")
    print(f"\n{args.seeds} seeds, length {args.length}, max_lag {args.max_lag}: {took:.0f} s")
    if args.speed:
        for which in ("typical", "dense"):
            took = time_correlate(correlate_fn=fn, max_lag=args.max_lag, which=which)
            print(f"correlate on 60,000 steps ({which}): {took:.2f} s (best of 3)")


if __name__ == "__main__":
    main()
