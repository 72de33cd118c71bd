#!/usr/bin/env python
"""The CUDA path end to end on a ~100M-parameter model: one prepared script for a lent GPU.

    .venv/bin/python benchmarks/gpu_check.py --out DIR [--device cuda] [--steps 20] [--generations 3]
        [--size 100m|tiny]

Builds a randomly initialised Qwen2 locally (no hub: 12 layers, hidden 768, 12 heads, a
character tokenizer; ``--size tiny`` for a CPU dry run of the script itself), then runs the
CLI as a user would: ``rg-tracer train --device cuda`` for ``--steps`` steps in fp32, in bf16
autocast and with LoRA (bf16), and ``rg-tracer eggroll --device cuda`` for ``--generations``
generations. Each run's step records carry ``timing`` (seconds, ``tokens_per_s``,
``peak_memory_mib``); the script prints per run the median step time, tokens/s, the peak
GPU memory and the exit status with the last stderr line of a failure, and writes
``DIR/gpu_check.json``. Nothing here runs in ``make test``; see docs/models.md for figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT / "datasets/toy_math/addition_small.jsonl"
SIZES = {"100m": ["--layers", "12", "--hidden", "768", "--heads", "12", "--max-positions", "512"],
         "tiny": ["--layers", "1", "--hidden", "32", "--heads", "2"]}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "rg-tracer"), *args], capture_output=True, text=True)


def _summary(name: str, log: Path, proc: subprocess.CompletedProcess, seconds: float) -> dict:
    steps = []
    if log.is_file():
        steps = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("kind") == "step"]
    timing = [s["timing"] for s in steps[1:]] or [s["timing"] for s in steps]  # the first step warms up
    per_step = [sum(v for k, v in t.items() if k in ("sample_and_score", "generate", "train")) for t in timing]
    pick = lambda key: statistics.median(t[key] for t in timing) if timing and key in timing[0] else None  # noqa: E731
    peak = max((t.get("peak_memory_mib") or t.get("peak_rss_mib") or 0 for t in timing), default=None)
    return {"run": name, "exit": proc.returncode, "steps": len(steps), "wall_s": seconds,
            "step_s": statistics.median(per_step) if per_step else None, "tokens_per_s": pick("tokens_per_s"),
            "peak_mib": peak, "error": None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--size", choices=SIZES, default="100m")
    a = ap.parse_args()
    out = Path(a.out)
    model = out / "model"
    if not model.exists():
        proc = _cli("init-model", str(model), "--arch", "qwen2", *SIZES[a.size])
        if proc.returncode:
            sys.exit(f"init-model failed: {proc.stderr.strip()}")
    common = ["--model", str(model), "--dataset", str(DATASET), "--device", a.device, "--no-progress",
              "--eval-every", "0", "--overwrite"]
    train = ["train", *common, "--batch-size", "8", "--group-size", "8", "--max-new-tokens", "64",
             "--max-steps", str(a.steps), "--learning-rate", "1e-5"]
    runs = {
        "train fp32": [*train, "--dtype", "float32"],
        "train bf16 autocast": [*train, "--dtype", "bfloat16"],
        "train LoRA bf16": [*train, "--dtype", "bfloat16", "--lora"],
        "eggroll bf16": ["eggroll", *common, "--dtype", "bfloat16", "--population", "16",
                         "--generations", str(a.generations), "--prompts", "8"],
    }
    results = []
    for i, (name, args) in enumerate(runs.items()):
        run_dir = out / f"run{i}"
        t0 = time.perf_counter()
        proc = _cli(*args, "--output-dir", str(run_dir))
        results.append(_summary(name, run_dir / "train.jsonl", proc, time.perf_counter() - t0))
        r = results[-1]
        print(f"{name:22} exit {r['exit']} steps {r['steps']:3} step {r['step_s'] or float('nan'):.3f} s "
              f"tokens/s {r['tokens_per_s'] or float('nan'):9.0f} peak {r['peak_mib'] or float('nan'):8.0f} MiB"
              + (f"  ERROR {r['error']}" if r["error"] else ""), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
