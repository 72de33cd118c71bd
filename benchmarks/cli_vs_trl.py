#!/usr/bin/env python
"""``rg-tracer train`` as a user runs it, against a TRL ``GRPOTrainer`` script: whole processes.

    .venv/bin/python benchmarks/cli_vs_trl.py [--setting small|large|both] [--repeats 3]
        [--long-steps N] [--short-steps N] [--json out.json]

What is measured. ``train_throughput.py`` times one ``train_step`` inside a process with EOS
suppressed; this benchmark measures what a user pays instead: each run is a fresh process,
timed from ``exec`` to exit, and nothing is switched off or patched.

* **ours** is exactly the command line::

      rg-tracer train --model M --dataset datasets/toy_math/addition_small.jsonl \\
          --batch-size 2 --group-size 8 --max-new-tokens N --temperature 1 --kl-coef 0 \\
          --learning-rate 1e-5 --max-grad-norm 1.0 --max-steps S --output-dir TMP --threads 1

  with every other default on: EOS allowed (completions stop early), the lean sampler, the
  step log with every completion written to ``train.jsonl``, grokking diagnostics
  (``--diag-every 10``, and the slow-gradient EMA every step), the progress bar (to a file),
  evaluation at its default (``--eval-every 100``: greedily before step 1 and after the last
  step -- once each in every run here, since runs are shorter than 100 steps) and the
  checkpoint written at the end.
* **TRL** is this file's ``--worker trl``, a plain script: load the same model directory
  (``rg_tracer.models.load_model``: ``transformers.AutoModelForCausalLM`` plus the saved
  character tokenizer, which ``AutoTokenizer`` alone would rewire under transformers 5),
  ``GRPOTrainer`` with ``GRPOConfig(per_device_train_batch_size=16, num_generations=8,
  max_completion_length=N, temperature=1.0, top_k=0, top_p=1.0, beta=0.0,
  learning_rate=1e-5, max_grad_norm=1.0, lr_scheduler_type="constant", bf16=False,
  use_cpu=True, gradient_checkpointing=False, report_to="none", save_strategy="no",
  logging_steps=10**6, max_steps=S, seed=42)`` and one reward function: the arithmetic
  scorer's axes mixed with ``configs/reward_mixer.yaml``'s weights, as our side mixes them.
  EOS allowed too. In TRL 1.16 (``grpo_config.py``) ``steps_per_generation`` defaults to
  ``gradient_accumulation_steps`` = 1, so the generation batch is one optimizer step's 16
  completions, and ``num_iterations`` = 1: ``_prepare_inputs`` generates every step and
  the trainer takes one optimizer step per generation batch, as ours does. Gradient
  checkpointing (TRL's default) is off so that both sides do one forward and one backward
  per step; TRL's evaluation is off (no eval dataset) and it saves nothing -- ours
  evaluates and saves once per run, which the differencing below removes.

Both sides: same model files, prompts (``datasets/toy_math/addition_small.jsonl``), 2 prompts
x G=8 = 16 completions per optimizer step, seed 42, fp32, one torch thread (``--threads 1``
for ours, ``torch.set_num_threads(1)`` for TRL) and ``OMP_NUM_THREADS=MKL_NUM_THREADS=1``.

Start-up (imports, model load, ``GRPOTrainer``/``prepare_run`` construction, our two evals
and checkpoint, TRL's teardown) is removed by differencing: every repeat runs each side
twice, ``--long-steps`` and ``--short-steps``, and per step = (long - short) / (long - short
steps), for the process's CPU time (user + sys of that child alone, ``os.wait4``) and its
wall time. The four runs of a repeat are interleaved (ours long, TRL long, ours short, TRL
short) and the order is reversed every other repeat; the figure is the median over repeats.
CPU time is the headline: with one thread it is the work done, and it is not inflated when
other processes compete for the machine's cores as wall time is.

Tokens. A random model's EOS rate is the same distribution on both sides, but each side
draws its own samples, so completions differ in length. Generated tokens per step are
counted on both sides, EOS included, pads excluded: ours from ``train.jsonl``
(``generation[*].completion_tokens`` of each step record), TRL's from the ``completion_ids``
its reward function receives (each cut after its first EOS by TRL); the differenced steps'
tokens are long run minus short run (both runs draw the same samples for their common
steps). Printed per setting: s/step each side, the ratio TRL/ours (above 1: ours faster),
tokens/step, tokens per CPU-second, the per-token-normalised ratio (TRL's CPU s per token
over ours) and each side's peak RSS (``ru_maxrss`` of the long run). Both sides' generation
keeps running finished rows until every row has emitted EOS (``model.generate`` does so too),
so the padded width per step (longest completion) is printed as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf_common as pc  # noqa: E402

HERE = Path(__file__).resolve()
SEED = 42  # the CLI's default --seed; TRL gets the same
EVAL_EVERY_DEFAULT = 100  # rg-tracer train's default --eval-every: a long run must stay below it
# long / short steps per setting: the differenced steps' CPU (small ~2.3 s, large ~9 s) dwarfs the start-up's
# run-to-run jitter (~0.1-0.2 s); measured repeat spread of the per-step figure: 2-6% (2 cores, other jobs on)
STEPS = {"small": (90, 10), "large": (24, 4)}


# ----------------------------------------------------------------------------------------
# worker: a TRL GRPOTrainer script
# ----------------------------------------------------------------------------------------
def worker_trl(a) -> None:
    import torch

    torch.set_num_threads(1)
    import datasets
    import yaml
    from trl import GRPOConfig, GRPOTrainer

    from rg_tracer.models import load_model, quiet_transformers
    from rg_tracer.scorers import ArithmeticScorer

    quiet_transformers()
    datasets.disable_progress_bars()
    model, tok = load_model(a.model_dir)  # left padding, the saved character tokenizer
    rows = [json.loads(line) for line in open(pc.DATASET)]
    train = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": str(r["answer"])} for r in rows])
    weights = yaml.safe_load(open(pc.MIXER))["weights"]
    scorer = ArithmeticScorer()
    tokens, widths = [], []  # per step: generated tokens (EOS included), longest completion

    def arithmetic_reward(prompts, completions, answer, completion_ids, **kwargs):
        tokens.append(sum(len(ids) for ids in completion_ids))
        widths.append(max(len(ids) for ids in completion_ids))
        scores = scorer.score(prompts, completions, [{"answer": x} for x in answer])
        return [sum(w * s.get(k, 0.0) for k, w in weights.items()) for s in scores]

    out_dir = tempfile.mkdtemp(prefix="trl-cli-bench-")
    args = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=16, num_generations=8,
        max_completion_length=a.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
        beta=0.0, learning_rate=1e-5, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, max_steps=a.max_steps,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", logging_steps=10**6, save_strategy="no", seed=SEED,
    )
    assert args.steps_per_generation == 1 and args.gradient_accumulation_steps == 1 and args.num_iterations == 1
    assert args.generation_batch_size == 16
    trainer = GRPOTrainer(model=model, reward_funcs=arithmetic_reward, args=args, train_dataset=train,
                          processing_class=tok)
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    pc.write_json(a.out, {"tokens": tokens, "widths": widths, "steps": trainer.state.global_step,
                          "threads": torch.get_num_threads()})


# ----------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------
def run_child(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` to completion; its own CPU time, peak RSS and wall time (``os.wait4``)."""
    env = {**os.environ, **pc.THREAD_ENV}
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=pc.ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-6000:])
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}")
    return {"cpu": usage.ru_utime + usage.ru_stime, "user": usage.ru_utime, "sys": usage.ru_stime,
            "wall": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def run_ours(model_dir: Path, setting: pc.Setting, steps: int, tmp: Path) -> dict:
    out_dir = tmp / f"ours-{steps}"
    shutil.rmtree(out_dir, ignore_errors=True)
    exe = Path(sys.executable).parent / "rg-tracer"
    cmd = [str(exe), "train", "--model", str(model_dir), "--dataset", str(pc.DATASET),
           "--batch-size", str(setting.prompts_per_step), "--group-size", str(setting.group_size),
           "--max-new-tokens", str(setting.max_new_tokens), "--temperature", "1", "--kl-coef", "0",
           "--learning-rate", "1e-5", "--max-grad-norm", "1.0", "--max-steps", str(steps),
           "--output-dir", str(out_dir), "--threads", "1"]
    r = run_child(cmd, tmp / "ours.log")
    records = [json.loads(line) for line in open(out_dir / "train.jsonl")]
    step_records = [x for x in records if x["kind"] == "step"]
    assert len(step_records) == steps, (len(step_records), steps)
    r["tokens"] = [sum(g["completion_tokens"] for g in x["generation"]) for x in step_records]
    r["widths"] = [max(g["completion_tokens"] for g in x["generation"]) for x in step_records]
    r["timing"] = [x["timing"] for x in step_records]
    r["evals"] = sum(x["kind"] == "eval" for x in records)
    r["log_bytes"] = (out_dir / "train.jsonl").stat().st_size
    shutil.rmtree(out_dir, ignore_errors=True)
    return r


def run_trl(model_dir: Path, setting: pc.Setting, steps: int, tmp: Path) -> dict:
    out = tmp / "trl.json"
    cmd = [sys.executable, str(HERE), "--worker", "trl", "--model-dir", str(model_dir),
           "--max-new-tokens", str(setting.max_new_tokens), "--max-steps", str(steps), "--out", str(out)]
    r = run_child(cmd, tmp / "trl.log")
    w = json.loads(out.read_text())
    assert w["steps"] == steps and len(w["tokens"]) == steps, (w["steps"], len(w["tokens"]), steps)
    r.update(tokens=w["tokens"], widths=w["widths"])
    return r


def difference(long: dict, short: dict, n_long: int, n_short: int) -> dict:
    n = n_long - n_short
    return {"cpu_s": (long["cpu"] - short["cpu"]) / n, "wall_s": (long["wall"] - short["wall"]) / n,
            "tokens": sum(long["tokens"][n_short:]) / n,
            "width": pc.median(long["widths"][n_short:]),
            "startup_cpu_s": short["cpu"] - n_short * (long["cpu"] - short["cpu"]) / n,
            "peak_rss_mib": long["peak_rss_mib"], "peak_rss_short_mib": short["peak_rss_mib"]}


def bench_setting(name: str, a, tmp: Path) -> dict:
    setting = pc.SETTINGS[name]
    n_long, n_short = a.long_steps or STEPS[name][0], a.short_steps or STEPS[name][1]
    if not 0 < n_short < n_long < EVAL_EVERY_DEFAULT:
        raise SystemExit(f"need 0 < short ({n_short}) < long ({n_long}) < {EVAL_EVERY_DEFAULT}: a longer run "
                         "would evaluate once more than the short one and the difference would count it")
    model_dir = tmp / name
    params = pc.build_model(model_dir, setting)
    print(f"\n[{name}] {params:,} parameters, {setting.max_new_tokens} new tokens; "
          f"{a.repeats} repeats x (ours, TRL) x ({n_long}, {n_short} steps)", flush=True)
    runners = {"ours": run_ours, "trl": run_trl}
    plan = [("ours", n_long), ("trl", n_long), ("ours", n_short), ("trl", n_short)]
    raw = {"ours": [], "trl": []}
    for rep in range(a.repeats):
        got = {}
        for side, steps in (plan if rep % 2 == 0 else plan[::-1]):
            r = runners[side](model_dir, setting, steps, tmp)
            got[(side, steps)] = r
            print(f"  rep {rep + 1} {side:<4} {steps:>3} steps: {r['cpu']:7.2f} CPU-s {r['wall']:7.2f} s wall, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB, {sum(r['tokens'])} tokens; load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
        for side in raw:
            d = difference(got[(side, n_long)], got[(side, n_short)], n_long, n_short)
            d["runs"] = {str(k[1]): v for k, v in got.items() if k[0] == side}
            raw[side].append(d)
            print(f"  rep {rep + 1} {side:<4} per step {d['cpu_s']:.4f} CPU-s {d['wall_s']:.4f} s wall, "
                  f"{d['tokens']:.0f} tokens/step", flush=True)
    summary = {}
    for side, reps in raw.items():
        med = lambda k: pc.median([d[k] for d in reps])  # noqa: E731
        summary[side] = {k: med(k) for k in ("cpu_s", "wall_s", "tokens", "width", "startup_cpu_s", "peak_rss_mib")}
        summary[side]["cpu_s_range"] = pc.spread([d["cpu_s"] for d in reps])
        summary[side]["tokens_per_cpu_s"] = summary[side]["tokens"] / summary[side]["cpu_s"]
    if raw["ours"] and raw["ours"][0]["runs"]:
        timing = [t for d in raw["ours"] for t in d["runs"][str(n_long)]["timing"][n_short:]]
        summary["ours"]["log_timing_s"] = {k: pc.median([t[k] for t in timing]) for k in ("sample_and_score", "train")
                                            if k in timing[0]}
    o, t = summary["ours"], summary["trl"]
    summary["ratio_cpu"] = t["cpu_s"] / o["cpu_s"]
    summary["ratio_wall"] = t["wall_s"] / o["wall_s"]
    summary["ratio_per_token"] = (t["cpu_s"] / t["tokens"]) / (o["cpu_s"] / o["tokens"])
    summary.update(params=params, long_steps=n_long, short_steps=n_short, max_new_tokens=setting.max_new_tokens)
    print_setting(name, summary)
    return {"summary": summary, "raw": raw}


def print_setting(name: str, s: dict) -> None:
    o, t = s["ours"], s["trl"]
    print(f"\n== {name}: {s['params']:,} parameters, {s['max_new_tokens']} new tokens max, "
          f"per step = ({s['long_steps']}-step run - {s['short_steps']}-step run) / {s['long_steps'] - s['short_steps']}")
    print(f"{'':<34}{'rg-tracer CLI':>16}{'TRL script':>16}{'TRL/ours':>10}")
    rows = [
        ("CPU s / step (median)", "cpu_s", "{:.4f}", True),
        ("wall s / step (median)", "wall_s", "{:.4f}", True),
        ("generated tokens / step", "tokens", "{:.0f}", False),
        ("longest completion / step", "width", "{:.0f}", False),
        ("generated tokens / CPU-s", "tokens_per_cpu_s", "{:.0f}", False),
        ("start-up + end CPU s (per run)", "startup_cpu_s", "{:.2f}", True),
        ("peak RSS MiB (long run)", "peak_rss_mib", "{:.0f}", True),
    ]
    for label, key, fmt, ratio in rows:
        r = f"{t[key] / o[key]:>9.2f}x" if ratio else ""
        print(f"{label:<34}{fmt.format(o[key]):>16}{fmt.format(t[key]):>16}{r}")
    lo_o, hi_o = o["cpu_s_range"]
    lo_t, hi_t = t["cpu_s_range"]
    print(f"{'CPU s / step, repeats min-max':<34}{f'{lo_o:.4f}-{hi_o:.4f}':>16}{f'{lo_t:.4f}-{hi_t:.4f}':>16}")
    print(f"ours faster by {s['ratio_cpu']:.2f}x CPU ({s['ratio_wall']:.2f}x wall); per generated token "
          f"{s['ratio_per_token']:.2f}x")
    if "log_timing_s" in o:
        print("ours, train.jsonl timing (median per step): "
              + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in o["log_timing_s"].items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=["small", "large", "both"], default="both")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the four runs per setting")
    p.add_argument("--long-steps", type=int, help=f"steps of the long run (default: small {STEPS['small'][0]}, "
                                                  f"large {STEPS['large'][0]})")
    p.add_argument("--short-steps", type=int, help=f"steps of the short run (default: small {STEPS['small'][1]}, "
                                                   f"large {STEPS['large'][1]})")
    p.add_argument("--json", help="write all raw and summary results here")
    p.add_argument("--worker", choices=["trl"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--max-new-tokens", type=int, help=argparse.SUPPRESS)
    p.add_argument("--max-steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker_trl(a)
        return 0
    t_start = time.perf_counter()
    env = pc.environment()
    print("machine:", json.dumps(env))
    names = ["small", "large"] if a.setting == "both" else [a.setting]
    everything = {"environment": env, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="rgt-cli-bench-") as tmp:
        for name in names:
            everything["settings"][name] = bench_setting(name, a, Path(tmp))
    everything["environment"]["loadavg_end"] = os.getloadavg()[0]
    everything["elapsed_s"] = time.perf_counter() - t_start
    print(f"\nbenchmark took {everything['elapsed_s'] / 60:.1f} min")
    if a.json:
        pc.write_json(a.json, everything)
    return 0


if __name__ == "__main__":
    sys.exit(main())
