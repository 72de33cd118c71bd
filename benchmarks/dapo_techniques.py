#!/usr/bin/env python
"""Does dynamic sampling pay for its extra generation? And what does KL-off save?

    .venv/bin/python benchmarks/dapo_techniques.py [--steps 600] [--seeds 3]

Part 1 trains the demo task (one-digit sums, random-init 137k Qwen2, demo settings) with
and without ``--dynamic-sampling`` from the same model and seeds, and prints, per arm:
greedy correctness on the whole training split every 50 steps (the logged batch of a
dynamic run is biased: it drops all-correct groups), the step and the number of generated
tokens at which it first reaches 0.5, and the final value. Baseline: plain sampling.

Part 2 times a training step with ``--kl-coef 0.1`` (reference forward each step) against
``--kl-coef 0`` (reference skipped). Baseline: KL on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rg_tracer.dapo.config import TrainConfig
from rg_tracer.dapo.trainer import DAPOHybridTrainer
from rg_tracer.dapo.setup import prepare_run
from rg_tracer.models import TinyModelSpec, init_model, quiet_transformers

ROOT = Path(__file__).resolve().parent.parent


def demo_config(model: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=str(model), output_dir=str(out), dataset=str(ROOT / "datasets/toy_math/addition_tiny.jsonl"),
                    reward_mixer=str(ROOT / "configs/demo/reward_mixer.yaml"), eval_every=0, save_every=0,
                    progress=False)
    return TrainConfig.from_file(str(ROOT / "configs/demo/train.yaml"), **{**settings, **overrides})


def run_arm(model: Path, out: Path, steps: int, seed: int, dynamic: bool) -> dict:
    trainer = DAPOHybridTrainer(prepare_run(demo_config(
        model, out, max_steps=steps, seed=seed, dynamic_sampling=dynamic, max_sampling_rounds=4,
        eval_every=50, eval_samples=0)))
    trainer.fit()
    records = list(map(json.loads, open(trainer.run.log_path)))
    tokens, tokens_at, reached, final = 0.0, {}, None, None
    for r in records:
        if r["kind"] == "step":  # dropped groups were generated too: rounds x batch x G
            groups = r["rl"].get("groups_sampled", trainer.config.batch_size)
            tokens += groups * trainer.config.group_size * r["rl"]["completion_length_mean"]
            tokens_at[r["step"]] = tokens
        elif r["kind"] == "eval" and r["split"] == "train":
            final = r["metrics"]["correctness"]
            if reached is None and final >= 0.5:
                reached = r["step"]
    return {"steps_to_0.5": reached, "tokens_to_0.5": tokens_at.get(reached), "tokens": tokens,
            "final_train_correctness": final}


def kl_step_time(model: Path, tmp: Path, kl_coef: float, steps: int = 60) -> float:
    trainer = DAPOHybridTrainer(prepare_run(demo_config(model, tmp / f"kl{kl_coef}", max_steps=steps, kl_coef=kl_coef)))
    times = []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        trainer.train_step(step)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[10:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        init_model(model, TinyModelSpec(arch="qwen2", layers=2, hidden=64, heads=4))
        print(f"part 1: demo task, {args.steps} steps, seeds 0..{args.seeds - 1}")
        arms = {"plain": False, "dynamic": True}
        results = {name: [run_arm(model, tmp / f"{name}{s}", args.steps, s, dyn) for s in range(args.seeds)]
                   for name, dyn in arms.items()}
        for name, rows in results.items():
            for s, row in enumerate(rows):
                print(f"  {name:8s} seed {s}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                              for k, v in row.items()))
        for key in ("final_train_correctness", "tokens"):
            plain = statistics.mean(r[key] for r in results["plain"])
            dyn = statistics.mean(r[key] for r in results["dynamic"])
            print(f"  {key}: plain {plain:.4g}, dynamic {dyn:.4g}, ratio dynamic/plain {dyn / plain:.2f}")
        print("part 2: median step time, KL on (reference forward) vs off")
        on, off = kl_step_time(model, tmp, 0.1), kl_step_time(model, tmp, 0.0)
        print(f"  kl_coef=0.1: {on * 1e3:.2f} ms, kl_coef=0: {off * 1e3:.2f} ms, off/on {off / on:.2f}")


if __name__ == "__main__":
    main()
