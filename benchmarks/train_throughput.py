#!/usr/bin/env python
"""rg-tracer's training loop side by side with TRL's GRPOTrainer on the same work.

    .venv/bin/python benchmarks/train_throughput.py [--setting small|large|both]
        [--repeats 3] [--steps N] [--warmup N] [--sides rg-tracer,trl,trl-gc] [--json out.json]
        [--sides rg-tracer,patched,trl --patch FILE.py]   # try a change on our side

Both sides train the same randomly initialised Qwen2 + character tokenizer (built once
with ``rg_tracer.models.init_model`` and loaded from disk by each side), on the prompts of
``datasets/toy_math/addition_small.jsonl``, with G=8 completions per prompt and 2 prompts
(16 completions) per optimizer step, temperature 1.0 (top-k/top-p off), fp32, AdamW at
lr 1e-5 and grad-norm clip 1.0, one optimizer step per sampled batch, no KL term and no
reference model, and the same reward: the arithmetic scorer's axes mixed with the weights
of ``configs/reward_mixer.yaml``. A random model rarely emits EOS, and a sequence that
does would stop early on one side only by chance, so both sides generate with
``min_new_tokens = max_new_tokens`` (EOS suppressed): every completion is exactly
``max_new_tokens`` long. A wrapper around ``model.generate`` (the same on both sides)
counts the sequences and new tokens actually produced, and the table reports them.

Sides: ``rg-tracer``; ``trl``, GRPOTrainer with gradient checkpointing off, so that it does
the same work (one forward and one backward per step) -- the ratios are against this side;
``trl-gc``, TRL's default gradient checkpointing on (a second forward inside backward: less
activation memory, more time); ``patched``, rg-tracer with ``--patch FILE.py``, whose
``patch(trainer)`` is applied before timing (to measure a proposed change without editing
the package).

Each run is a fresh subprocess with ``torch.set_num_threads(1)`` (and OMP/MKL threads 1):
``--warmup`` steps, then ``--steps`` timed steps. Runs alternate between sides (order
reversed every repeat); the figure per side is the median over repeats of each run's
median step time, in wall time and in process CPU time. With one thread the two agree on
an idle machine; when other jobs compete for the cores, wall time absorbs their load and
CPU time is the steadier measure of the work itself. rg-tracer runs with its JSONL step log
on (its default; see log_overhead.py).
Peak memory is each worker's peak RSS (``ru_maxrss``) and its rise over the RSS just
before the first step (imports, model and trainer already built).

Step time, ours: one ``DAPOHybridTrainer.train_step`` call (sample, score, update, log).
TRL: the interval between consecutive ``on_step_end`` callbacks (data loading, generation,
reward, forward/backward, optimizer, scheduler, metric bookkeeping).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf_common as pc  # noqa: E402

HERE = Path(__file__).resolve()

# ----------------------------------------------------------------------------------------
# worker: rg-tracer
# ----------------------------------------------------------------------------------------
def worker_ours(a) -> dict:
    pc.set_threads()
    import torch

    from rg_tracer.dapo.config import TrainConfig
    from rg_tracer.dapo.trainer import DAPOHybridTrainer
    from rg_tracer.dapo.setup import prepare_run
    from rg_tracer.models import quiet_transformers

    quiet_transformers()
    rss_imports = pc.rss_mib()
    out_dir = tempfile.mkdtemp(prefix="rgt-bench-")
    cfg = TrainConfig(
        model=a.model_dir, dataset=str(pc.DATASET), reward_mixer=str(pc.MIXER), output_dir=out_dir,
        batch_size=a.prompts_per_step, group_size=a.group_size, max_steps=10**6, learning_rate=1e-5,
        weight_decay=0.0, max_grad_norm=1.0, kl_coef=0.0, max_new_tokens=a.max_new_tokens, temperature=1.0,
        eval_every=0, save_every=0, threads=1, device="cpu", progress=False, seed=a.seed,
    )
    trainer = DAPOHybridTrainer(prepare_run(cfg))
    model, tok = trainer.run.model, trainer.run.tokenizer
    model.generation_config.min_new_tokens = a.max_new_tokens  # EOS suppressed: full-length completions
    if a.no_log:
        trainer.logger = pc.NullLogger()
    apply_patch(trainer, a.patch)

    phases = pc.Phases()
    pc.wrap_generate(model, phases, tok.eos_token_id, tok.pad_token_id)
    pc.wrap_cached_decode(phases, tok.eos_token_id, tok.pad_token_id)
    phases.wrap(trainer.sampler, "sample", "sample_and_score")
    phases.wrap(trainer, "_update", "update")
    phases.wrap(trainer.policy, "score_for_update", "forward")
    phases.wrap(trainer.dapo, "train_step", "upstream_train_step")
    phases.wrap(trainer.optimizer, "step", "optimizer")
    phases.wrap(trainer.logger, "write", "log_write")
    torch.manual_seed(a.seed)
    rss_before = pc.rss_mib()
    completion_tokens = []
    for step in range(1, a.warmup + a.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        record = trainer.train_step(step)
        phases.close_step(time.perf_counter() - t0, time.process_time() - c0)
        completion_tokens.append(sum(g["completion_tokens"] for g in record["generation"]))
    trainer.logger.close()
    log_bytes = Path(trainer.run.log_path).stat().st_size if Path(trainer.run.log_path).exists() else 0
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "side": "rg-tracer", "patch": a.patch, "log": not a.no_log, "steps": phases.steps[a.warmup:],
        "completion_tokens_logged": completion_tokens[a.warmup:],
        "params": sum(p.numel() for p in model.parameters()),
        "rss_after_imports_mib": rss_imports, "rss_before_steps_mib": rss_before,
        "peak_rss_mib": pc.peak_rss_mib(), "log_bytes": log_bytes, "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype),
    }


def apply_patch(trainer, patch: str) -> None:
    """Try a change on our side without touching the package: ``--patch FILE.py`` loads FILE
    and calls its ``patch(trainer)`` on the built trainer before the first step."""
    if patch == "none":
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("rgt_bench_patch", patch)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.patch(trainer)


# ----------------------------------------------------------------------------------------
# worker: TRL GRPOTrainer
# ----------------------------------------------------------------------------------------
def worker_trl(a) -> dict:
    pc.set_threads()
    import datasets
    import torch
    import yaml
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rg_tracer.models import load_model, quiet_transformers
    from rg_tracer.scorers import ArithmeticScorer

    quiet_transformers()
    datasets.disable_progress_bars()
    rss_imports = pc.rss_mib()
    # The same loader as our side: AutoTokenizer alone would, under transformers 5, swap the
    # saved character tokenizer's pre-tokenizer for Qwen2's (which drops spaces).
    model, tok = load_model(a.model_dir)  # left padding
    rows = [json.loads(line) for line in open(pc.DATASET)]
    train = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": str(r["answer"])} for r in rows])
    weights = yaml.safe_load(open(pc.MIXER))["weights"]
    scorer = ArithmeticScorer()

    def arithmetic_reward(prompts, completions, answer, **kwargs):
        scores = scorer.score(prompts, completions, [{"answer": x} for x in answer])
        return [sum(w * s.get(k, 0.0) for k, w in weights.items()) for s in scores]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=a.prompts_per_step * a.group_size, num_generations=a.group_size,
        steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1,
        max_completion_length=a.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
        generation_kwargs={"min_new_tokens": a.max_new_tokens},  # EOS suppressed, as on our side
        beta=0.0, epsilon=0.2, learning_rate=1e-5, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, max_steps=a.warmup + a.steps,
        use_cpu=True, bf16=False, fp16=False, report_to="none", logging_steps=10**6,
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=a.seed, log_completions=False,
        # TRL defaults to gradient checkpointing (a second forward inside backward: more work,
        # less activation memory). Off for the same-work comparison; side "trl-gc" turns it on.
        gradient_checkpointing=a.trl_gc,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=arithmetic_reward, args=args, train_dataset=train,
                          processing_class=tok)
    phases = pc.Phases()
    pc.wrap_generate(model, phases, tok.eos_token_id, tok.pad_token_id)
    phases.wrap(trainer, "_generate_and_score_completions", "gen_and_score")
    phases.wrap(trainer, "_calculate_rewards", "reward")
    phases.wrap(trainer, "training_step", "training_step")
    phases.wrap(trainer, "compute_loss", "forward_loss")

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.last_end = None
            self.t_opt = None

        def on_step_begin(self, args, state, control, **kw):
            if self.last_end is None:
                self.last_end = (time.perf_counter(), time.process_time())

        def on_pre_optimizer_step(self, args, state, control, **kw):
            self.t_opt = (time.perf_counter(), time.thread_time())

        def on_optimizer_step(self, args, state, control, **kw):
            phases.add("optimizer", time.perf_counter() - self.t_opt[0], time.thread_time() - self.t_opt[1])

        def on_step_end(self, args, state, control, **kw):
            now = (time.perf_counter(), time.process_time())
            phases.close_step(now[0] - self.last_end[0], now[1] - self.last_end[1])
            self.last_end = now

    trainer.add_callback(StepTimer())
    torch.manual_seed(a.seed)
    rss_before = pc.rss_mib()
    try:
        trainer.train()
    finally:
        shutil.rmtree(args.output_dir, ignore_errors=True)
    m = trainer._metrics["train"] if hasattr(trainer, "_metrics") else {}
    return {
        "side": "trl", "steps": phases.steps[a.warmup:],
        "completion_mean_length_trl": list(m.get("completions/mean_length", []))[a.warmup:],
        "params": sum(p.numel() for p in model.parameters()),
        "rss_after_imports_mib": rss_imports, "rss_before_steps_mib": rss_before,
        "peak_rss_mib": pc.peak_rss_mib(), "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype), "optim": str(args.optim),
        "gradient_checkpointing": args.gradient_checkpointing,
    }


# ----------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------
def buckets(side: str, ph: dict, cpu: bool) -> dict:
    """Map one step's raw phases onto common buckets: generate, score, train, log/other."""
    g = lambda k: ph.get(("cpu:" if cpu else "") + k, 0.0)  # noqa: E731
    total = g("total")
    if side == "rg-tracer":
        out = {"generate": g("generate"), "decode+score+feedback": g("sample_and_score") - g("generate"),
               "train: forward": g("forward"), "train: backward+optimizer+upstream": g("update") - g("forward"),
               "record+log": total - g("sample_and_score") - g("update")}
    else:
        out = {"generate": g("generate"), "decode+score+feedback": g("gen_and_score") - g("generate"),
               "train: forward": g("forward_loss"),
               "train: backward+optimizer+upstream": g("training_step") - g("gen_and_score") - g("forward_loss")
               + g("optimizer"),
               "record+log": total - g("training_step") - g("optimizer")}
    return out


def summarise(side: str, runs: list[dict]) -> dict:
    """Median over runs of each run's median step (wall and CPU); phases likewise."""
    per_run = []
    for r in runs:
        steps = r["steps"]
        per_run.append({
            "wall": pc.median([s["total"] for s in steps]),
            "cpu": pc.median([s["cpu:total"] for s in steps]),
            "phases_wall": {k: pc.median([buckets(side, s, False)[k] for s in steps]) for k in buckets(side, {}, False)},
            "phases_cpu": {k: pc.median([buckets(side, s, True)[k] for s in steps]) for k in buckets(side, {}, True)},
            "new_tokens": pc.median([s.get("n_new_tokens", 0) for s in steps]),
            "new_tokens_min": min(s.get("n_new_tokens", 0) for s in steps),
            "sequences": pc.median([s.get("n_sequences", 0) for s in steps]),
            "eos": sum(s.get("n_eos_tokens", 0) for s in steps),
            "prompt_width": pc.median([s.get("n_prompt_width", 0) for s in steps]),
            "peak": r["peak_rss_mib"], "before": r["rss_before_steps_mib"], "imports": r["rss_after_imports_mib"],
        })
    wall = pc.median([p["wall"] for p in per_run])
    cpu = pc.median([p["cpu"] for p in per_run])
    # Fastest decile of all timed steps (CPU): every step does identical work here, so this
    # estimates the step's cost without other processes' interference.
    cpu_p10 = pc.quantile([s["cpu:total"] for r in runs for s in r["steps"]], 0.1)
    tokens = pc.median([p["new_tokens"] for p in per_run])
    seqs = pc.median([p["sequences"] for p in per_run])
    phase = lambda key: {k: pc.median([p[key][k] for p in per_run]) for k in per_run[0][key]}  # noqa: E731
    return {
        "runs": len(runs), "step_s": wall, "step_s_range": pc.spread([p["wall"] for p in per_run]),
        "step_cpu_s": cpu, "step_cpu_s_range": pc.spread([p["cpu"] for p in per_run]),
        "sequences_per_step": seqs, "new_tokens_per_step": tokens,
        "new_tokens_min_step": min(p["new_tokens_min"] for p in per_run),
        "eos_tokens": sum(p["eos"] for p in per_run),
        "prompt_width": pc.median([p["prompt_width"] for p in per_run]),
        "completions_per_s": seqs / wall, "tokens_per_s": tokens / wall,
        "completions_per_cpu_s": seqs / cpu, "tokens_per_cpu_s": tokens / cpu,
        "step_cpu_p10_s": cpu_p10, "completions_per_cpu_s_p10": seqs / cpu_p10,
        "tokens_per_cpu_s_p10": tokens / cpu_p10,
        "phases_wall_s": phase("phases_wall"), "phases_cpu_s": phase("phases_cpu"),
        "peak_rss_mib": pc.median([p["peak"] for p in per_run]),
        "rss_before_steps_mib": pc.median([p["before"] for p in per_run]),
        "rss_after_imports_mib": pc.median([p["imports"] for p in per_run]),
        "training_rss_rise_mib": pc.median([p["peak"] - p["before"] for p in per_run]),
        "params": runs[0]["params"], "dtype": runs[0]["dtype"], "threads": runs[0]["threads"],
        "optim": runs[0].get("optim", "torch.optim.AdamW (default: for-loop on CPU)"),
    }


def print_setting(name: str, setting: pc.Setting, res: dict, sides: list[str]) -> None:
    cols = [res[s] for s in sides]
    base = res.get("trl")
    first = cols[0]
    print(f"\n== {name}: {first['params']:,} params, G={setting.group_size}, "
          f"{setting.completions_per_step} completions/step, {setting.max_new_tokens} new tokens, "
          f"{first['runs']} runs/side x {res['steps']} timed steps (+{res['warmup']} warm-up) ==")
    others = [s for s in sides if s != "trl"]  # ratios are against "trl" (same work)
    head = "".join(f"{s:>16}" for s in sides) + ("".join(f"{s + '/TRL':>20}" for s in others) if base else "")
    print(f"{'':<38}{head}")

    def row(label, key, fmt="{:.3f}", ratio=True, inverse=False):
        cells = "".join(f"{fmt.format(res[s][key]):>16}" for s in sides)
        if base and ratio:
            for s in others:
                a, b = res[s][key], base[key]
                r = (b / a if inverse else a / b) if a and b else None
                cells += f"{'' if r is None else f'{r:.2f}x':>20}"
        print(f"{label:<38}{cells}")

    row("step time, wall, median (s)", "step_s", "{:.4f}", inverse=True)
    row("completions / s (wall)", "completions_per_s", "{:.1f}")
    row("generated tokens / s (wall)", "tokens_per_s", "{:.0f}")
    row("step CPU time, median (s)", "step_cpu_s", "{:.4f}", inverse=True)
    row("completions / CPU-s", "completions_per_cpu_s", "{:.1f}")
    row("generated tokens / CPU-s", "tokens_per_cpu_s", "{:.0f}")
    row("step CPU time, fastest decile (s)", "step_cpu_p10_s", "{:.4f}", inverse=True)
    row("completions / CPU-s, fastest decile", "completions_per_cpu_s_p10", "{:.1f}")
    row("sequences generated / step", "sequences_per_step", "{:.0f}", ratio=False)
    row("new tokens generated / step", "new_tokens_per_step", "{:.0f}", ratio=False)
    row("fewest new tokens in any step", "new_tokens_min_step", "{:.0f}", ratio=False)
    row("EOS tokens generated (all runs)", "eos_tokens", "{:.0f}", ratio=False)
    row("prompt width (padded, median)", "prompt_width", "{:.0f}", ratio=False)
    row("peak RSS (MiB)", "peak_rss_mib", "{:.0f}")
    row("RSS before first step (MiB)", "rss_before_steps_mib", "{:.0f}")
    row("peak rise during training (MiB)", "training_rss_rise_mib", "{:.1f}")
    for key, label in (("step_s_range", "run medians wall, min-max (s)"), ("step_cpu_s_range", "run medians CPU, min-max (s)")):
        print(f"{label:<38}" + "".join(f"{f'{res[s][key][0]:.4f}-{res[s][key][1]:.4f}':>16}" for s in sides))
    print("  where a step's time goes (median per step: CPU ms, share of step CPU; wall ms in brackets):")
    print(f"    {'':<36}" + "".join(f"{s:>26}" for s in sides))
    for k in first["phases_cpu_s"]:
        cells = ""
        for r in cols:
            c, w = r["phases_cpu_s"][k], r["phases_wall_s"][k]
            share = 100 * c / r["step_cpu_s"]
            cells += f"{f'{c * 1000:.1f} {share:.0f}% ({w * 1000:.1f})':>26}"
        print(f"    {k:<36}{cells}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=["small", "large", "both"], default="both")
    p.add_argument("--repeats", type=int, default=3, help="runs per side and setting (fresh process each)")
    p.add_argument("--steps", type=int, help="timed steps per run (default: per setting)")
    p.add_argument("--warmup", type=int, help="untimed steps per run (default: per setting)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default="rg-tracer,trl,trl-gc",
                   help="comma list of: rg-tracer; trl (gradient checkpointing off: the same work); "
                        "trl-gc (TRL's default gradient checkpointing on); patched (rg-tracer with --patch)")
    p.add_argument("--patch", default="none", metavar="FILE.py",
                   help="experiment: FILE.py's patch(trainer) is applied to our trainer before timing")
    p.add_argument("--json", help="write all raw and summary results here")
    # worker-only options
    p.add_argument("--worker", choices=["rg-tracer", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--max-new-tokens", type=int, help=argparse.SUPPRESS)
    p.add_argument("--prompts-per-step", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--group-size", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--no-log", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trl-gc", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        result = worker_ours(a) if a.worker == "rg-tracer" else worker_trl(a)
        pc.write_json(a.out, result)
        return 0

    sides = a.sides.split(",")
    if "patched" in sides and a.patch == "none":
        p.error("--sides patched needs --patch FILE.py")
    env = pc.environment()
    print("machine:", json.dumps(env))
    names = ["small", "large"] if a.setting == "both" else [a.setting]
    everything = {"environment": env, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="rgt-bench-models-") as tmp:
        for name in names:
            setting = pc.SETTINGS[name]
            steps = a.steps or setting.steps
            warmup = setting.warmup if a.warmup is None else a.warmup
            model_dir = Path(tmp) / name
            params = pc.build_model(model_dir, setting)
            print(f"\n[{name}] model: {params:,} parameters, building done; running {a.repeats} x {sides}",
                  flush=True)
            raw = {s: [] for s in sides}
            for rep in range(a.repeats):
                order = sides if rep % 2 == 0 else sides[::-1]
                for side in order:
                    args = ["--worker", "trl" if side.startswith("trl") else "rg-tracer", "--model-dir", str(model_dir), "--max-new-tokens",
                            str(setting.max_new_tokens), "--steps", str(steps), "--warmup", str(warmup),
                            "--seed", str(a.seed + rep), "--prompts-per-step", str(setting.prompts_per_step),
                            "--group-size", str(setting.group_size)]
                    if side == "patched":
                        args += ["--patch", a.patch]
                    if side == "trl-gc":
                        args += ["--trl-gc"]
                    t0 = time.perf_counter()
                    r = pc.run_worker(HERE, args)
                    med = pc.median([s["total"] for s in r["steps"]])
                    cpu = pc.median([s["cpu:total"] for s in r["steps"]])
                    print(f"  rep {rep + 1} {side:<10} median step {med:.4f} s wall, {cpu:.4f} s CPU;"
                          f" peak RSS {r['peak_rss_mib']:.0f} MiB; load {__import__('os').getloadavg()[0]:.1f}"
                          f"  (run {time.perf_counter() - t0:.0f} s)", flush=True)
                    raw[side].append(r)
            res = {s: summarise("trl" if s.startswith("trl") else "rg-tracer", raw[s]) for s in sides}
            res.update(steps=steps, warmup=warmup)
            print_setting(name, setting, res, sides)
            everything["settings"][name] = {"summary": res, "raw": raw}
    everything["environment"]["loadavg_end"] = __import__("os").getloadavg()[0]
    if a.json:
        pc.write_json(a.json, everything)
    return 0


if __name__ == "__main__":
    sys.exit(main())
