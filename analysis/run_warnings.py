"""Warnings a run page leads with: the run may look like learning and not be.

Each warning is ``{kind, message, steps, evidence}`` (``steps``: ``[first,
last]`` where it holds; ``evidence``: the numbers behind it), from a stated
rule over the logs:

* ``memorisation`` (correctness evals): the train split rose significantly
  from the first eval to the last, the held-out split did not, and at the last
  eval train is above held-out by more than ``MIN_GAP``, beyond sampling error.
  "Significantly": a one-sided two-proportion z-test on the logged eval sizes
  ``n`` at level ``ALPHA`` (Agresti 2013, sec. 2.1.5).
* ``reward_hacking``: a weighted axis other than the primary one (correctness,
  else the largest positive weight) changed in its rewarded direction (a
  jump or phase that passed :mod:`analysis.transitions`' test; the direction
  is the sign of its weight), while the primary axis gained no such change
  upwards and held-out correctness did not rise significantly (same z-test).
* ``collapse``: ``zero_std_group_frac`` averaged at least ``COLLAPSE_FRAC``
  over a window of ``window`` steps (``max(20, 5%)`` of the run): the groups
  carry no learning signal; or ``entropy`` averaged below ``ENTROPY_FLOOR`` of
  its mean over the first 5% of steps over such a window, unless the primary
  axis averaged at least ``SOLVED`` there (a policy certain because it is right
  has converged, not collapsed).
* ``saturated``: the same zero-variance window, but the primary axis averaged at
  least ``SOLVED`` there: the groups agree because the training prompts are
  solved, not because the policy collapsed. RL has nothing left to learn from
  them; only held-out evals say whether that generalised.
* ``dead_axis``: an axis with a non-zero weight whose every sample had the
  same value (no step mean moved, no group had a spread).
* ``no_eos``: at least ``TRUNCATED_FRAC`` of the completions of the last 10%
  of steps hit the length limit (no end token); not with a one-token limit,
  which leaves no room for an answer and an end token.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

__all__ = ["run_warnings", "two_proportion_p", "ALPHA", "MIN_GAP", "COLLAPSE_FRAC", "ENTROPY_FLOOR", "SOLVED",
           "TRUNCATED_FRAC"]

ALPHA = 0.01
MIN_GAP = 0.1
COLLAPSE_FRAC = 0.9
SOLVED = 0.9
ENTROPY_FLOOR = 0.1
TRUNCATED_FRAC = 0.99
PRIMARY = "correctness"


def two_proportion_p(p1: float, n1: int, p2: float, n2: int) -> float:
    """One-sided p-value that the rate behind ``p2`` (of ``n2``) exceeds that behind ``p1``
    (statsmodels' pooled two-proportion z-test)."""
    if not (n1 and n2) or any(v is None or not math.isfinite(v) for v in (p1, p2)):
        return math.nan
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    if pooled in (0.0, 1.0):  # no spread at all: the z-test is undefined, the answer is not
        return 0.0 if p2 > p1 else 1.0
    from statsmodels.stats.proportion import proportions_ztest  # imported here: slow to import

    return float(proportions_ztest([p2 * n2, p1 * n1], [n2, n1], alternative="larger")[1])


def _evals(evals: pl.DataFrame, split: str, axis: str = PRIMARY) -> list[dict]:
    if evals.is_empty():
        return []
    return evals.filter((pl.col("split") == split) & (pl.col("axis") == axis)).sort("step").to_dicts()


def _memorisation(evals: pl.DataFrame) -> list[dict]:
    train, test = _evals(evals, "train"), _evals(evals, "test")
    if len(train) < 2 or len(test) < 2 or any(r["n"] is None for r in train + test):
        return []
    t0, t1, h0, h1 = train[0], train[-1], test[0], test[-1]
    train_rose = two_proportion_p(t0["value"], t0["n"], t1["value"], t1["n"])
    test_rose = two_proportion_p(h0["value"], h0["n"], h1["value"], h1["n"])
    gap = t1["value"] - h1["value"]
    gap_p = two_proportion_p(h1["value"], h1["n"], t1["value"], t1["n"])
    if not (train_rose < ALPHA and test_rose >= ALPHA and gap > MIN_GAP and gap_p < ALPHA):
        return []
    return [{
        "kind": "memorisation",
        "message": (f"{PRIMARY} on the train split rose from {t0['value']:.2f} to {t1['value']:.2f} while held-out "
                    f"went from {h0['value']:.2f} to {h1['value']:.2f} (n = {h1['n']}): the run memorises, it does "
                    f"not generalise"),
        "steps": [t0["step"], t1["step"]],
        "evidence": {"train_first": t0["value"], "train_last": t1["value"], "test_first": h0["value"],
                     "test_last": h1["value"], "train_n": t1["n"], "test_n": h1["n"], "gap": gap,
                     "p_train_rose": train_rose, "p_test_rose": test_rose, "p_gap": gap_p},
    }]


def _primary(weights: dict[str, float]) -> str | None:
    if PRIMARY in weights:
        return PRIMARY
    positive = {k: v for k, v in weights.items() if v > 0}
    return max(positive, key=positive.get) if positive else None


def _reward_hacking(transitions: pl.DataFrame, evals: pl.DataFrame, weights: dict[str, float]) -> list[dict]:
    primary = _primary(weights)
    if primary is None or transitions.is_empty():
        return []
    rewards = transitions.filter(pl.col("kind") == "reward")
    if rewards.filter((pl.col("axis") == primary) & (pl.col("delta") > 0)).height:
        return []
    test = _evals(evals, "test", primary)
    held_out_rose = None
    if len(test) >= 2 and test[0]["n"] and test[-1]["n"]:
        held_out_rose = two_proportion_p(test[0]["value"], test[0]["n"], test[-1]["value"], test[-1]["n"]) < ALPHA
    if held_out_rose:
        return []
    out = []
    for axis, weight in sorted(weights.items()):
        if axis == primary or weight == 0:
            continue
        gains = rewards.filter((pl.col("axis") == axis) & (pl.col("delta") * np.sign(weight) > 0))
        if gains.is_empty():
            continue
        g = gains.sort(pl.col("size").abs(), descending=True).row(0, named=True)
        held = "" if held_out_rose is None else " and held-out did not rise"
        out.append({
            "kind": "reward_hacking",
            "message": (f"{axis} (weight {weight:+g}) went from {g['before']:.3g} to {g['after']:.3g} (steps "
                        f"{g['onset_step']}–{g['end_step']}) while {primary} gained nothing significant{held}: "
                        f"the policy may be gaming {axis}; read its completions"),
            "steps": [g["onset_step"], g["end_step"]],
            "evidence": {"axis": axis, "weight": weight, "before": g["before"], "after": g["after"],
                         "size": g["size"], "p_value": g["p_value"], "primary": primary,
                         "held_out_rose": held_out_rose},
        })
    return out


def _sustained(steps: np.ndarray, values: np.ndarray, window: int, test) -> list[int] | None:
    """[first, last] step of the windows whose rolling mean passes ``test``; None if none does."""
    if len(values) < window:
        return None
    rolling = pl.Series(values).rolling_mean(window).to_numpy()
    hit = np.flatnonzero(test(rolling))
    if len(hit) == 0:
        return None
    return [int(steps[hit[0] - window + 1]), int(steps[hit[-1]])]


def _primary_mean(fitness: pl.DataFrame, axis: str | None, steps: list[int]) -> float | None:
    if axis is None or fitness.is_empty():
        return None
    rows = fitness.filter((pl.col("kind") == "reward") & (pl.col("axis") == axis)
                          & pl.col("step").is_between(steps[0], steps[1]))
    return float(rows["mean"].mean()) if rows.height else None


def _collapse(metrics: pl.DataFrame, window: int, fitness: pl.DataFrame, primary: str | None) -> list[dict]:
    out = []
    for name in ("zero_std_group_frac", "entropy"):
        series = metrics.filter(pl.col("metric") == name).sort("step")
        if series.height < window:
            continue
        steps, values = series["step"].to_numpy(), series["value"].to_numpy()
        if name == "zero_std_group_frac":
            where = _sustained(steps, values, window, lambda r: r >= COLLAPSE_FRAC)
            solved = _primary_mean(fitness, primary, where) if where else None
            if where and solved is not None and solved >= SOLVED:
                out.append({"kind": "saturated", "steps": where,
                            "message": (f"from step {where[0]} to {where[1]} at least {COLLAPSE_FRAC:.0%} of groups "
                                        f"scored alike with mean {primary} {solved:.2f}: the training prompts are "
                                        "solved, so RL has no signal left; held-out evals, not the training "
                                        "reward, say whether it generalised"),
                            "evidence": {"metric": name, "window": window, "threshold": COLLAPSE_FRAC,
                                         "primary": primary, "primary_mean": solved}})
            elif where:
                out.append({"kind": "collapse", "steps": where,
                            "message": (f"at least {COLLAPSE_FRAC:.0%} of groups had no reward variance over "
                                        f"{window}-step windows from step {where[0]} to {where[1]}: no learning "
                                        "signal there"),
                            "evidence": {"metric": name, "window": window, "threshold": COLLAPSE_FRAC,
                                         "last_value": float(values[-1])}})
        else:
            early = float(np.mean(values[: max(1, len(values) // 20)]))
            if early <= 0:
                continue
            where = _sustained(steps, values, window, lambda r: r < ENTROPY_FLOOR * early)
            solved = _primary_mean(fitness, primary, where) if where else None
            if where and not (solved is not None and solved >= SOLVED):  # certain because right: converged
                out.append({"kind": "collapse", "steps": where,
                            "message": (f"entropy fell below {ENTROPY_FLOOR:.0%} of its early level ({early:.3g}) "
                                        f"from step {where[0]} to {where[1]}: the policy stopped exploring"),
                            "evidence": {"metric": name, "window": window, "early": early,
                                         "last_value": float(values[-1])}})
    return out


def _dead_axes(fitness: pl.DataFrame, weights: dict[str, float]) -> list[dict]:
    out = []
    rewards = fitness.filter(pl.col("kind") == "reward")
    for axis, weight in sorted(weights.items()):
        if weight == 0:
            continue
        rows = rewards.filter(pl.col("axis") == axis)
        series = rows["mean"].drop_nulls()
        spread = rows["std"].fill_null(0.0).abs().max() if "std" in rows.columns else 0.0
        if series.len() and series.max() == series.min() and not spread:  # every sample the same value
            out.append({"kind": "dead_axis", "steps": [int(rewards["step"].min()), int(rewards["step"].max())],
                        "message": (f"{axis} (weight {weight:+g}) was {series[0]:.3g} at every step: it never gave "
                                    "a learning signal (check its scorer and the task)"),
                        "evidence": {"axis": axis, "weight": weight, "value": float(series[0])}})
    return out


def _no_eos(truncation: pl.DataFrame, max_new_tokens: int | None) -> list[dict]:
    if truncation.is_empty() or max_new_tokens == 1:  # one token: room for the answer or EOS, not both
        return []
    tail = truncation.sort("step").tail(max(1, truncation.height // 10))
    frac = float(tail["truncated"].mean())
    if frac < TRUNCATED_FRAC:
        return []
    return [{"kind": "no_eos", "steps": [int(tail["step"].min()), int(tail["step"].max())],
             "message": (f"{frac:.0%} of the completions of the last {tail.height} steps hit the length limit: "
                         "the model does not emit an end token, so every answer is cut off"),
             "evidence": {"truncated_frac": frac, "steps": tail.height}}]


def run_warnings(fitness: pl.DataFrame, metrics: pl.DataFrame, evals: pl.DataFrame, transitions: pl.DataFrame,
                 truncation: pl.DataFrame, weights: dict[str, float], max_new_tokens: int | None = None) -> list[dict]:
    """The warnings of one run (frames filtered to it; ``truncation``: step, truncated fraction;
    ``max_new_tokens``: the run's completion limit, when known)."""
    steps = fitness["step"].n_unique() if not fitness.is_empty() else 0
    window = max(20, steps // 20)
    return [*_memorisation(evals), *_reward_hacking(transitions, evals, weights), *_collapse(metrics, window, fitness, _primary(weights)),
            *_dead_axes(fitness, weights), *_no_eos(truncation, max_new_tokens)]
