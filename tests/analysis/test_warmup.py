"""A supervised warm-up (``sft_steps``) is another regime: its metrics stay out of lead/lag and warnings."""

from __future__ import annotations

import json

import numpy as np
from synth import run_record, step_record, write_log

from analysis import analyze_runs

SFT, STEPS = 100, 400


def _log(path, sft_steps: int | None):
    rng = np.random.default_rng(0)
    run = run_record()
    if sft_steps is not None:
        run["config"] = {**run["config"], "sft_steps": sft_steps}
    records = [run]
    for step in range(1, STEPS + 1):
        if step <= SFT:  # cross-entropy falls and the answer distribution sharpens from 6 nats
            rl = {"loss": 3.0 - 0.02 * step, "entropy": 6.0 - 0.05 * step, "policy_loss": None, "kl": None,
                  "clip_ratio": None, "sft/examples": 64}
            record = step_record(step, [], rl=rl)
        else:  # RL: entropy steady around 0.5, correctness noisy around 0.5
            rl = {"entropy": 0.5 + 0.02 * rng.standard_normal()}
            record = step_record(step, [{"correctness": float(rng.random() < 0.5)} for _ in range(8)], rl=rl)
        records.append(record)
    return write_log(path / "train.jsonl", records)


def test_warm_up_steps_do_not_set_the_entropy_baseline(tmp_path):
    _log(tmp_path / "runs" / "warm", SFT)
    _log(tmp_path / "runs" / "unmarked", None)  # the same log, without saying the first steps were SFT
    analyze_runs(tmp_path / "runs", tmp_path / "reports", progress=False)

    def kinds(run):
        return [w["kind"] for w in json.loads((tmp_path / "reports" / run / "summary.json").read_text())["warnings"]]

    assert "collapse" not in kinds("warm")  # RL entropy is steady from its own start
    assert "collapse" in kinds("unmarked")  # measured from step 1, the RL entropy looks collapsed
    page = (tmp_path / "reports" / "warm" / "index.html").read_text()
    assert "Steps 1–100 are a supervised warm-up" in page
