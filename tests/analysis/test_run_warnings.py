"""Each warning fires on a log built to deserve it, and stays quiet on its healthy twin."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from synth import eval_record, run_record, step_record, write_log

from analysis import analyze_runs
from analysis.run_warnings import run_warnings, two_proportion_p
from analysis.transitions import changes_tables

STEPS = np.arange(1, 401)
EMPTY = pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "metric": pl.String, "value": pl.Float64})
NO_TRUNC = pl.DataFrame(schema={"step": pl.Int64, "truncated": pl.Float64})


def _evals(train: list[float], test: list[float], n: int = 200) -> pl.DataFrame:
    rows = [{"step": 100 * (i + 1), "split": split, "n": n, "axis": "correctness", "value": v}
            for split, curve in (("train", train), ("test", test)) for i, v in enumerate(curve)]
    return pl.DataFrame(rows)


def _fitness(**curves: np.ndarray) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    parts = []
    for axis, mu in curves.items():
        draws = mu[:, None] + rng.normal(0, 0.1, (len(mu), 16))
        parts.append(pl.DataFrame({"run_id": "r", "kind": "reward", "axis": axis, "step": STEPS, "n": 16,
                                   "mean": draws.mean(1), "std": draws.std(1, ddof=1)}))
    return pl.concat(parts)


def _kinds(fitness=None, metrics=EMPTY, evals=None, truncation=NO_TRUNC, weights=None) -> list[str]:
    fitness = fitness if fitness is not None else _fitness(correctness=np.full(len(STEPS), 0.5))
    evals = evals if evals is not None else _evals([], [])
    transitions, _ = changes_tables(fitness)
    return [w["kind"] for w in run_warnings(fitness, metrics, evals, transitions, truncation,
                                             weights or {"correctness": 1.0})]


def test_two_proportion_p_by_hand():
    # 0.5 of 100 -> 0.6 of 100: pooled 0.55, se = sqrt(.55 * .45 * .02) = 0.07036, z = 1.4213
    assert two_proportion_p(0.5, 100, 0.6, 100) == pytest.approx(0.07761, abs=1e-4)
    assert two_proportion_p(0.6, 100, 0.5, 100) == pytest.approx(1 - 0.07761, abs=1e-4)


def test_memorisation_needs_a_gap_beyond_sampling_error():
    assert _kinds(evals=_evals([0.2, 0.6, 0.95], [0.2, 0.2, 0.18])) == ["memorisation"]
    assert _kinds(evals=_evals([0.2, 0.6, 0.95], [0.2, 0.6, 0.9])) == []  # it generalised
    assert _kinds(evals=_evals([0.2, 0.6, 0.95], [0.2, 0.2, 0.18], n=4)) == []  # 4 prompts: could be chance


def test_reward_hacking_is_an_auxiliary_gain_without_a_primary_one():
    flat = np.full(len(STEPS), 0.3)
    rises = np.where(STEPS >= 200, 0.8, 0.2)
    falls = np.where(STEPS >= 200, 0.1, 0.8)
    weights = {"correctness": 1.0, "format_penalty": -0.25}
    hacked = _fitness(correctness=flat, format_penalty=falls)
    assert _kinds(hacked, weights=weights) == ["reward_hacking"]
    assert _kinds(_fitness(correctness=rises, format_penalty=falls), weights=weights) == []  # correctness rose too
    worse = _fitness(correctness=flat, format_penalty=np.where(STEPS >= 200, 0.8, 0.1))  # penalty rose: no gain
    assert _kinds(worse, weights=weights) == []
    held_out_rose = _evals([0.2, 0.5], [0.2, 0.5])
    assert _kinds(hacked, evals=held_out_rose, weights=weights) == []


def test_collapse_of_groups_and_of_entropy():
    def metric(name, values):
        return pl.DataFrame({"run_id": "r", "step": STEPS, "metric": name, "value": values})

    late = np.where(STEPS >= 300, 0.95, 0.3)
    assert _kinds(metrics=metric("zero_std_group_frac", late)) == ["collapse"]
    assert _kinds(metrics=metric("zero_std_group_frac", np.where(STEPS % 2 == 0, 0.95, 0.3))) == []  # not sustained
    assert _kinds(metrics=metric("entropy", np.where(STEPS >= 300, 0.01, 2.0))) == ["collapse"]
    solved = _fitness(correctness=np.where(STEPS >= 300, 0.97, 0.4))  # groups agree because all are right
    assert _kinds(solved, metrics=metric("zero_std_group_frac", late)) == ["saturated"]
    failing = _fitness(correctness=np.where(STEPS >= 300, 0.02, 0.4))  # groups agree because all are wrong
    assert _kinds(failing, metrics=metric("zero_std_group_frac", late)) == ["collapse"]
    sharp = metric("entropy", np.where(STEPS >= 300, 0.01, 2.0))
    assert _kinds(solved, metrics=sharp) == [] and _kinds(failing, metrics=sharp) == ["collapse"]
    assert _kinds(metrics=metric("entropy", np.where(STEPS >= 300, 1.0, 2.0))) == []


def test_dead_axis_and_no_eos():
    fitness = pl.concat([_fitness(correctness=np.full(len(STEPS), 0.5)),
                         pl.DataFrame({"run_id": "r", "kind": "reward", "axis": "reasoning", "step": STEPS, "n": 16,
                                       "mean": 0.0, "std": 0.0})])
    assert _kinds(fitness, weights={"correctness": 1.0, "reasoning": 0.5}) == ["dead_axis"]
    assert _kinds(fitness, weights={"correctness": 1.0, "reasoning": 0.0}) == []  # not rewarded: not a problem
    cut = pl.DataFrame({"step": STEPS, "truncated": np.where(STEPS > 50, 1.0, 0.5)})
    assert _kinds(truncation=cut) == ["no_eos"]
    assert _kinds(truncation=cut.with_columns(truncated=pl.lit(0.9))) == []
    fitness = _fitness(correctness=np.full(len(STEPS), 0.5))
    transitions, _ = changes_tables(fitness)
    one_token = run_warnings(fitness, EMPTY, _evals([], []), transitions, cut, {"correctness": 1.0}, max_new_tokens=1)
    assert one_token == []  # a one-token limit leaves no room for an end token: by design


def test_summary_json_carries_the_warnings(tmp_path):
    runs = tmp_path / "runs"
    records = [run_record()]
    for t in range(1, 61):
        records.append(step_record(t, [{"correctness": float(i % 2)} for i in range(8)]))
        if t % 20 == 0:
            records.append(eval_record(t, {"correctness": 0.3 + 0.3 * t / 20}, split="train", n=300))
            records.append(eval_record(t, {"correctness": 0.2}, split="test", n=300))
    write_log(runs / "memo" / "train.jsonl", records)
    analyze_runs(runs, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "memo" / "summary.json").read_text())
    (warning,) = [w for w in summary["warnings"] if w["kind"] == "memorisation"]
    assert set(warning) == {"kind", "message", "steps", "evidence"} and warning["steps"] == [20, 60]
    assert warning["evidence"]["test_n"] == 300 and warning["evidence"]["p_gap"] < 0.01
    assert "no_eos" not in [w["kind"] for w in summary["warnings"]]  # synth completions end
    page = (tmp_path / "out" / "memo" / "index.html").read_text()
    assert page.index("Warnings") < page.index("What happened")
    # the index lists it per run; correctness's step mean is 0.5 throughout, but its samples vary: not dead
    assert "<td>memorisation</td>" in (tmp_path / "out" / "index.html").read_text()
