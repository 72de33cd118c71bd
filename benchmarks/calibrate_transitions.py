#!/usr/bin/env python
"""Calibration of ``analysis.transitions``: false findings on null series, power on planted changes.

Every series is what the trainer logs for one reward axis: per step, ``n``
samples, and the step's mean and std (``fitness``'s ``n``, ``mean``,
``std``). Null families have no abrupt change; planted ones have one.

    .venv/bin/python benchmarks/calibrate_transitions.py [--seeds 50] [--steps 400]

Prints, per family, the share of runs with any jump, with any phase, and
for planted changes the share found where they are. The table in
``docs/analysis.md`` comes from this script.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from analysis.transitions import analyse_series

SAMPLES = 16
NOISE = 0.2  # per-sample SD of continuous axes: the step mean's SD is NOISE / sqrt(SAMPLES)
STEP_SD = NOISE / np.sqrt(SAMPLES)


def _continuous(mu: np.ndarray, rng: np.random.Generator, m: int = SAMPLES) -> tuple:
    draws = mu[:, None] + rng.normal(0, NOISE, (len(mu), m))
    return draws.mean(1), np.full(len(mu), m), draws.std(1, ddof=1)


def _binary(p: np.ndarray, rng: np.random.Generator, m: int) -> tuple:
    draws = (rng.random((len(p), m)) < p[:, None]).astype(float)
    return draws.mean(1), np.full(len(p), m), draws.std(1, ddof=1)


def _ar1(rng: np.random.Generator, length: int, phi: float, sd: float) -> np.ndarray:
    x = np.zeros(length)
    e = rng.normal(0, sd * np.sqrt(1 - phi * phi), length)
    for t in range(1, length):
        x[t] = phi * x[t - 1] + e[t]
    return x


def families(length: int) -> dict[str, tuple[str, Callable, int | None, float]]:
    """name -> (kind, generator(rng) -> (mean, n, std), planted step or None, planted size in step SDs)."""
    t = np.arange(length)
    mid = length // 2
    fam: dict[str, tuple[str, Callable, int | None, float]] = {
        "white noise": ("null", lambda r: _continuous(np.full(length, 0.5), r), None, 0),
        "random walk": ("null", lambda r: _continuous(0.5 + np.cumsum(r.normal(0, STEP_SD / 2, length)), r),
                        None, 0),
        "AR(1) phi 0.9": ("null", lambda r: _continuous(0.5 + _ar1(r, length, 0.9, 2 * STEP_SD), r), None, 0),
        "linear ramp": ("null", lambda r: _continuous(0.2 + 0.6 * t / length, r), None, 0),
        "decay, binomial, 16/step": ("null", lambda r: _binary(0.6 * np.exp(-t / 30), r, 16), None, 0),
        "decay, binomial, 64/step": ("null", lambda r: _binary(0.6 * np.exp(-t / 30), r, 64), None, 0),
        "sigmoid (one phase)": ("phase", lambda r: _continuous(0.2 + 0.4 / (1 + np.exp(-(t - mid) / 10)), r),
                                mid, 0),
    }
    for d in (0.5, 1.0, 2.0):
        fam[f"jump {d:g} SD"] = ("jump", lambda r, d=d: _continuous(0.5 + d * STEP_SD * (t >= mid), r), mid, d)
    fam["jump 2 SD on AR(1) 0.5"] = ("jump", lambda r: _continuous(
        0.5 + 2 * STEP_SD * (t >= mid) + _ar1(r, length, 0.5, STEP_SD / 2), r), mid, 2.0)
    return fam


def calibrate(seeds: int = 50, length: int = 400) -> list[dict]:
    """One row per family: rates over ``seeds`` runs (see the module docstring)."""
    rows = []
    steps = np.arange(1, length + 1)
    for name, (kind, gen, at, d) in families(length).items():
        jumps = phases = anything = found = 0
        started = time.perf_counter()
        for seed in range(seeds):
            mean, n, std = gen(np.random.default_rng(seed))
            got = analyse_series(steps, mean, n=n, std=std).transitions
            jumps += any(x.shape == "jump" for x in got)
            phases += any(x.shape == "phase" for x in got)
            anything += bool(got)
            if kind == "jump":
                tol = 12 / d**2
                found += any(x.shape == "jump" and abs(x.onset_step - steps[at]) <= tol for x in got)
            elif kind == "phase":
                found += sum(x.shape == "phase" and x.onset_step <= steps[at] <= x.end_step for x in got) == 1 \
                    and len(got) == 1
        rows.append({"family": name, "kind": kind, "runs": seeds, "any_jump": jumps / seeds,
                     "any_phase": phases / seeds, "any": anything / seeds, "found": found / seeds if kind != "null" else None,
                     "seconds": time.perf_counter() - started})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    rows = calibrate(args.seeds, args.steps)
    print(f"{args.seeds} seeds, {args.steps} steps, {SAMPLES} samples/step; step SD {STEP_SD:.3f}")
    print(f"| {'family':28} | runs with a jump | runs with a phase | runs with any | found (planted) |")
    print(f"|{'-' * 30}|------------------|-------------------|---------------|-----------------|")
    for r in rows:
        found = "" if r["found"] is None else f"{r['found']:.1%}"
        print(f"| {r['family']:28} | {r['any_jump']:>16.1%} | {r['any_phase']:>17.1%} | {r['any']:>13.1%} "
              f"| {found:>15} |")


if __name__ == "__main__":
    main()
