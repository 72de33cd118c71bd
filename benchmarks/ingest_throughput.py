"""Ingest throughput against DuckDB's own ``read_ndjson``, and peak memory.

Generates a synthetic ``rg-tracer/2`` log (default 62,500 steps x 16 samples =
1,000,000 sample rows, ~0.5 GB) in a temp dir, then, each side in its own
subprocess so timings and peak RSS do not mix:

* baseline — ``CREATE TABLE raw AS SELECT * FROM read_ndjson(log)`` into a fresh
  DuckDB file (connect to close);
* ingest   — ``analysis.db`` into a fresh DuckDB file (connect to close);
* analyze  — ``analysis.analyze_runs`` from an empty database: ingest + every
  table + the HTML report (peak memory target: 2 GiB);
* ingest of the first 1/4 and 1/2 of the log, to show cost grows linearly.

Prints times, the ingest/baseline ratio (target <= 1.5) and peak RSS. Not a test:

    .venv/bin/python benchmarks/ingest_throughput.py [--steps 62500] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rg_tracer.schema import RL_KEYS, SCHEMA, validate  # noqa: E402

TASKS = ("addition", "sorting", "word problems")
WORDS = "the answer is because we add carry digits then sort list items so result".split()


def write_log(path: Path, steps: int, prompts: int = 4, group: int = 4, seed: int = 0) -> None:
    """A log shaped like the trainer's: run record, steps, an eval every 50 steps, end."""
    rng = random.Random(seed)
    completions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(997)]
    run = {"schema": SCHEMA, "kind": "run", "time": 0.0, "config": {"lr": 1e-5}, "versions": {},
           "model": {"name_or_path": "tiny"}, "dataset": {}, "seed": seed, "resumed_from_step": None,
           "reward_weights": {"correctness": 1.0}}
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(validate(run)) + "\n")
        for step in range(1, steps + 1):
            p = 1.0 / (1.0 + 2.718281828 ** (-(step - steps / 2) / (steps / 20)))
            gepa, generation = [], []
            for pi in range(prompts):
                task = TASKS[(step + pi) % 3]
                prompt_id = f"{task[:3]}-{(step * prompts + pi) % 5000:04d}"
                for k in range(group):
                    correct = float(rng.random() < p)
                    text = completions[rng.randrange(997)]
                    gepa.append({"rewards": {"correctness": correct, "reasoning_quality": round(rng.random(), 4),
                                             "format_penalty": 0.0 if rng.random() < 0.9 else -1.0},
                                 "tags": {"completion_length": float(len(text.split()))},
                                 "verifier": {"exact_match": correct},
                                 "meta": {"task_id": task, "prompt_id": prompt_id}, "abstained": False})
                    generation.append({"prompt_id": prompt_id, "completion_id": f"{prompt_id}#{k}",
                                       "prompt_tokens": 12, "completion_tokens": len(text.split()),
                                       "truncated": False, "completion": text})
            rl = {key: rng.random() for key in RL_KEYS} | {"lr": 1e-5, "entropy": 2.0, "reward_mixed_mean": p}
            record = {"schema": SCHEMA, "kind": "step", "step": step, "time": float(step), "rl": rl,
                      "gepa": gepa, "generation": generation,
                      "curriculum": {t: {"reward_ema": p, "count": step} for t in TASKS}, "safety": {},
                      "timing": {"generate": 0.1, "score": 0.0, "train": 0.1, "log": 0.0}}
            if step <= 3:
                validate(record)  # the generator cannot drift from the schema
            f.write(json.dumps(record) + "\n")
            if step % 50 == 0:
                f.write(json.dumps({"schema": SCHEMA, "kind": "eval", "step": step, "split": "test", "n": 32,
                                    "metrics": {"correctness": p}}) + "\n")
        f.write(json.dumps({"schema": SCHEMA, "kind": "end", "step": steps, "status": "completed"}) + "\n")


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
side, log, runs, db, out = sys.argv[1:6]
import duckdb  # imports are not timed, on either side
if side != "baseline":
    from analysis import analyze_runs, ingest
start = time.perf_counter()
if side == "baseline":
    con = duckdb.connect(db)
    con.execute("CREATE TABLE raw AS SELECT * FROM read_ndjson(?)", [log])
    con.close()
elif side == "ingest":
    result = ingest(runs, db, progress=False)
    assert result.n_errors == 0, result
else:
    analyze_runs(runs, out, db, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_side(side: str, log: Path, runs: Path, tmp: Path, tag: str) -> dict:
    db = tmp / f"{tag}.duckdb"
    for stale in (db, Path(str(db) + ".wal")):
        stale.unlink(missing_ok=True)
    code = CHILD.format(root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, side, str(log), str(runs), str(db), str(tmp / "reports")],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def head_copy(src: Path, dst: Path, fraction: float) -> None:
    """The first ``fraction`` of the log's lines (a smaller log of the same shape)."""
    lines = src.read_bytes().splitlines(keepends=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join(lines[: int(len(lines) * fraction)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=62_500, help="steps to generate (16 samples each)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per side; the best is reported")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1/4 and 1/2 size runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rgt-bench-") as tmp_name:
        tmp = Path(tmp_name)
        runs = tmp / "runs"
        log = runs / "bench" / "train.jsonl"
        log.parent.mkdir(parents=True)
        start = time.perf_counter()
        write_log(log, args.steps)
        size = log.stat().st_size
        print(f"log: {args.steps} steps, {args.steps * 16:,} sample rows, {size / 2**20:.0f} MiB "
              f"(generated in {time.perf_counter() - start:.1f} s)")
        best: dict[str, dict] = {}
        for _ in range(args.repeat):  # interleaved, so background load hits both sides alike
            for side in ("baseline", "ingest"):
                got = run_side(side, log, runs, tmp, side)
                if side not in best or got["seconds"] < best[side]["seconds"]:
                    best[side] = got
        base, ours = best["baseline"], best["ingest"]
        print(f"read_ndjson (baseline): {base['seconds']:6.2f} s   peak RSS {base['peak_rss_mib']:6.0f} MiB")
        print(f"rg-tracer ingest:       {ours['seconds']:6.2f} s   peak RSS {ours['peak_rss_mib']:6.0f} MiB   "
              f"{size / 2**20 / ours['seconds']:.0f} MiB/s")
        print(f"ratio ingest / read_ndjson: {ours['seconds'] / base['seconds']:.2f}  (target <= 1.5)")
        full = run_side("analyze", log, runs, tmp, "analyze")
        print(f"ingest + analyze:       {full['seconds']:6.2f} s   peak RSS {full['peak_rss_mib']:6.0f} MiB  "
              f"(target <= 2048 MiB)")
        if not args.no_scaling:
            print("scaling (ingest time per MiB should stay flat):")
            for fraction in (0.25, 0.5):
                part = tmp / f"runs_{fraction}"
                head_copy(log, part / "bench" / "train.jsonl", fraction)
                got = run_side("ingest", log, part, tmp, f"part{fraction}")
                mib = size * fraction / 2**20
                per_mib = got["seconds"] / mib * 1000
                print(f"  {fraction:>4.0%} of the log: {got['seconds']:6.2f} s  ({per_mib:.1f} ms/MiB)")
            per_mib = ours["seconds"] / (size / 2**20) * 1000
            print(f"  100% of the log: {ours['seconds']:6.2f} s  ({per_mib:.1f} ms/MiB)")


if __name__ == "__main__":
    main()
