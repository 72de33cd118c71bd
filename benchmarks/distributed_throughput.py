#!/usr/bin/env python
"""Steps per second of ``rg-tracer train`` in 1 and in 2 processes under ``torchrun`` (gloo, CPU).

    .venv/bin/python benchmarks/distributed_throughput.py [--steps 60] [--repeats 2] [--json out.json]

Baseline: the same command in one process (``torchrun --nproc-per-node 1``, so both arms pay
the same launcher and process-group start-up, which the timing leaves out anyway). Work: the
demo's model size (random-init 2x64 Qwen2) and settings, RL only (no warm-up), 8 prompts x G=8,
one torch thread per process. Steps/s come from the log's step timestamps after 5 warm-up
steps. ``gather`` is rank 0's time in the per-step gather of the log payload (one
``gather_object`` to rank 0); the gradient all-reduce runs inside ``backward`` and is part of
``train``. On a 2-core shared CPU no speed-up is expected: the point is the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WARMUP = 5


def one_run(model: Path, out: Path, nproc: int, steps: int) -> dict:
    command = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "--no-python",
               str(BIN / "rg-tracer"), "train", "--config", str(REPO / "configs/demo/train.yaml"),
               "--model", str(model), "--output-dir", str(out), "--sft-steps", "0", "--batch-size", "8",
               "--group-size", "8", "--max-steps", str(steps), "--eval-every", "0", "--threads", "1",
               "--no-progress", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in (out / "train.jsonl").open()]
    timed = [r for r in records if r["kind"] == "step"][WARMUP:]
    span = timed[-1]["time"] - timed[0]["time"]
    wall = span / (len(timed) - 1)
    med = lambda key: statistics.median(r["timing"].get(key, 0.0) for r in timed)  # noqa: E731
    return {"processes": nproc, "steps_per_s": (len(timed) - 1) / span, "step_ms": 1e3 * wall,
            "sample_and_score_ms": 1e3 * med("sample_and_score"), "train_ms": 1e3 * med("train"),
            "gather_ms": 1e3 * med("gather"), "gather_share": med("gather") / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from rg_tracer.demo_run import build_demo_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_demo_model(work)
        rows = [one_run(work / "model", work / f"run{nproc}-{k}", nproc, args.steps)
                for k in range(args.repeats) for nproc in (1, 2)]
    print(f"{'processes':>9} {'steps/s':>8} {'step ms':>8} {'sample ms':>10} {'train ms':>9} {'gather ms':>10} {'gather %':>9}")
    for r in rows:
        print(f"{r['processes']:>9} {r['steps_per_s']:>8.2f} {r['step_ms']:>8.1f} {r['sample_and_score_ms']:>10.1f} "
              f"{r['train_ms']:>9.1f} {r['gather_ms']:>10.2f} {100 * r['gather_share']:>8.1f}%")
    one = statistics.median(r["steps_per_s"] for r in rows if r["processes"] == 1)
    two = statistics.median(r["steps_per_s"] for r in rows if r["processes"] == 2)
    print(f"2 processes / 1 process: {two / one:.2f}x steps/s (baseline: 1 process under torchrun)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratio_2_over_1": two / one}, indent=1))


if __name__ == "__main__":
    main()
