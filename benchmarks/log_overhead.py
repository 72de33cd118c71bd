#!/usr/bin/env python
"""Step time of rg-tracer's training loop with the JSONL step log on vs off.

    .venv/bin/python benchmarks/log_overhead.py [--setting small|large|both]
        [--pairs N] [--warmup 3] [--json out.json]

One trainer per setting (the same model and work as ``train_throughput.py``: random-init
Qwen2, G=8, 16 completions per step, EOS suppressed, one torch thread). After ``--warmup``
untimed steps it runs ``--pairs`` pairs of steps, one with ``JsonlLogger`` (the default)
and one with ``NullLogger``, the order swapped every pair, so both arms see the same mix of
prompts and, step by step, the same machine load. Reported:

* median step time (wall and CPU) per arm, and the median over pairs of the paired
  difference (on - off) / off with its interquartile range: the end-to-end answer, though a
  1-2% difference is inside the step-to-step noise of generation on a shared machine;
* the directly timed cost of the log: ``JsonlLogger.write`` (JSON encoding, NaN scrubbing,
  write + flush) and the step-record building that ``train_step`` does before calling it
  (per-sample ``gepa``/``generation`` lists; also paid with ``NullLogger``), as a share
  of the median step: the precise answer;
* bytes written per step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf_common as pc  # noqa: E402


def run_setting(setting: pc.Setting, model_dir: Path, pairs: int, warmup: int, seed: int) -> dict:
    import torch

    from rg_tracer.dapo.config import TrainConfig
    from rg_tracer.dapo.trainer import DAPOHybridTrainer
    from rg_tracer.runtime.log_writer import JsonlLogger
    from rg_tracer.dapo.setup import prepare_run

    out_dir = tempfile.mkdtemp(prefix="rgt-logbench-")
    cfg = TrainConfig(
        model=str(model_dir), dataset=str(pc.DATASET), reward_mixer=str(pc.MIXER), output_dir=out_dir,
        batch_size=setting.prompts_per_step, group_size=setting.group_size, max_steps=10**6,
        learning_rate=1e-5, kl_coef=0.0, max_new_tokens=setting.max_new_tokens, temperature=1.0,
        eval_every=0, save_every=0, threads=1, device="cpu", progress=False, seed=seed,
    )
    trainer = DAPOHybridTrainer(prepare_run(cfg))
    trainer.run.model.generation_config.min_new_tokens = setting.max_new_tokens
    jsonl, null = trainer.logger, pc.NullLogger()
    assert isinstance(jsonl, JsonlLogger), type(jsonl)

    phases = pc.Phases()
    phases.wrap(trainer.sampler, "sample", "sample")
    phases.wrap(trainer, "_update", "update")
    phases.wrap(jsonl, "write", "log_write")
    phases.wrap(null, "write", "log_write")

    arms = {"on": [], "off": []}
    step = 0

    def one(arm: str) -> None:
        nonlocal step
        step += 1
        trainer.logger = jsonl if arm == "on" else null
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step(step)
        rec = phases.close_step(time.perf_counter() - t0, time.process_time() - c0)
        if arm is not None:
            arms[arm].append(rec)

    torch.manual_seed(seed)
    for _ in range(warmup):
        one("on")
    arms = {"on": [], "off": []}
    size_before = Path(trainer.run.log_path).stat().st_size
    for i in range(pairs):
        for arm in (("on", "off") if i % 2 == 0 else ("off", "on")):
            one(arm)
    jsonl.close()
    size = Path(trainer.run.log_path).stat().st_size - size_before
    shutil.rmtree(out_dir, ignore_errors=True)

    def stats(recs: list[dict], cpu: bool) -> dict:
        p = "cpu:" if cpu else ""
        total = pc.median([r[p + "total"] for r in recs])
        write = pc.median([r.get(p + "log_write", 0.0) for r in recs])
        building = pc.median([r[p + "total"] - r[p + "sample"] - r[p + "update"] - r.get(p + "log_write", 0.0)
                              for r in recs])
        return {"step": total, "write": write, "record_building": building}

    res = {}
    for clock in ("wall", "cpu"):
        on, off = stats(arms["on"], clock == "cpu"), stats(arms["off"], clock == "cpu")
        key = "cpu:total" if clock == "cpu" else "total"
        paired = [100 * (a[key] - b[key]) / b[key] for a, b in zip(arms["on"], arms["off"])]
        res[clock] = {
            "on": on, "off": off,
            "step_diff_pct": pc.median(paired),
            "step_diff_pct_iqr": (pc.quantile(paired, 0.25), pc.quantile(paired, 0.75)),
            "write_pct_of_step": 100 * on["write"] / on["step"],
            "write_and_building_pct_of_step": 100 * (on["write"] + on["record_building"]) / on["step"],
        }
    res["steps_per_arm"] = len(arms["on"])
    res["bytes_per_step"] = size / len(arms["on"])
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", choices=["small", "large", "both"], default="both")
    p.add_argument("--pairs", type=int, help="on/off step pairs (default: 80 small, 20 large)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)

    os.environ.update(pc.THREAD_ENV)
    pc.set_threads()
    env = pc.environment()
    print("machine:", json.dumps(env))
    names = ["small", "large"] if a.setting == "both" else [a.setting]
    defaults = {"small": 80, "large": 20}
    results = {"environment": env, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="rgt-logbench-models-") as tmp:
        for name in names:
            setting = pc.SETTINGS[name]
            pairs = a.pairs or defaults[name]
            params = pc.build_model(Path(tmp) / name, setting)
            t0 = time.perf_counter()
            res = run_setting(setting, Path(tmp) / name, pairs, a.warmup, a.seed)
            res["params"] = params
            results["settings"][name] = res
            print(f"\n== {name}: {params:,} params, {setting.completions_per_step} completions x "
                  f"{setting.max_new_tokens} tokens per step; {res['steps_per_arm']} on/off step pairs "
                  f"({time.perf_counter() - t0:.0f} s) ==")
            for clock in ("wall", "cpu"):
                r = res[clock]
                lo, hi = r["step_diff_pct_iqr"]
                print(f"  [{clock}] step median: log on {r['on']['step'] * 1000:.2f} ms, off {r['off']['step'] * 1000:.2f} ms;"
                      f" paired difference median {r['step_diff_pct']:+.2f}% (IQR {lo:+.1f}% .. {hi:+.1f}%)")
                print(f"  [{clock}] JsonlLogger.write {r['on']['write'] * 1000:.3f} ms = {r['write_pct_of_step']:.2f}% of a step;"
                      f" + record building {r['on']['record_building'] * 1000:.3f} ms"
                      f" = {r['write_and_building_pct_of_step']:.2f}% of a step")
            print(f"  bytes per step record: {res['bytes_per_step']:.0f}")
    results["environment"]["loadavg_end"] = os.getloadavg()[0]
    if a.json:
        pc.write_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
