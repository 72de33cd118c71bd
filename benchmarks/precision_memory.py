#!/usr/bin/env python
"""Step time and memory of full fine-tuning in fp32, in bf16 autocast and with LoRA, side by side.

    .venv/bin/python benchmarks/precision_memory.py [--sizes 4m,30m] [--modes fp32,bf16,bf16-pure,lora,lora-bf16]
        [--steps 6] [--warmup 2] [--repeats 2] [--json out.json]

What each row is: one ``DAPOHybridTrainer`` (the CLI's trainer, every default on: KL to the
reference with ``--kl-coef 0.1``, the step log, diagnostics) in a fresh subprocess, on a
randomly initialised Qwen2 built once per size with ``rg_tracer.models.init_model`` (4m: 4
layers, hidden 256, 4.2M parameters; 30m: 7 layers, hidden 512, 29M), 2 prompts x G=8 of
``datasets/toy_math/addition_small.jsonl``, 32 new tokens, EOS suppressed so every mode
generates the same number of tokens, one torch thread. Modes:

* ``fp32``: ``--dtype float32``;
* ``bf16``: ``--dtype bfloat16``, forwards under autocast over float32 master weights;
* ``bf16-pure``: ``--dtype bfloat16 --pure-dtype`` (weights and AdamW state in bf16);
* ``lora``: ``--lora`` (r 8, every attention and MLP projection), fp32;
* ``lora-bf16``: ``--lora --dtype bfloat16`` (frozen base weights in bf16, adapters fp32).

Reported per row: the median step time over ``--steps`` timed steps (after ``--warmup``),
median over repeats (rows interleaved, order reversed every repeat); the process's peak RSS
(``ru_maxrss``: everything, imports and the tokenizer included); and the bytes of the tensors
training keeps, counted after a step: weights, gradients, AdamW's moments and the KL
reference (full fine-tuning with ``--kl-coef > 0`` keeps a frozen copy of the weights; LoRA
runs the base with the adapters off instead). CPU bf16 speed depends on the CPU's bf16
support (AVX512-BF16/AMX); without it autocast is slower than fp32 and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf_common as pc  # noqa: E402

SIZES = {"4m": dict(layers=4, hidden=256, heads=4), "30m": dict(layers=7, hidden=512, heads=8)}
MODES = {
    "fp32": dict(dtype="float32"),
    "bf16": dict(dtype="bfloat16"),
    "bf16-pure": dict(dtype="bfloat16", pure_dtype=True),
    "lora": dict(dtype="float32", lora=True),
    "lora-bf16": dict(dtype="bfloat16", lora=True),
}
NEW_TOKENS = 32


def _tensor_bytes(trainer) -> dict:
    """MiB of the tensors training holds: weights, gradients, optimizer state, KL reference."""
    def size(tensors) -> float:
        seen, total = set(), 0
        for t in tensors:
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total / 2**20

    params = list(trainer.run.model.parameters())
    state = [v for s in trainer.optimizer.optimizer.state.values() for v in s.values() if hasattr(v, "numel")]
    reference = getattr(trainer.dapo.ref_policy, "model", None)
    ref = size(reference.parameters()) if reference is not None and reference is not trainer.run.model else 0.0
    return {"weights_mib": size(params), "grads_mib": size(p.grad for p in params),
            "optimizer_mib": size(state), "reference_mib": ref}


def worker(a) -> dict:
    pc.set_threads()
    from rg_tracer.dapo.config import TrainConfig
    from rg_tracer.dapo.setup import prepare_run
    from rg_tracer.dapo.trainer import DAPOHybridTrainer
    from rg_tracer.models import quiet_transformers

    quiet_transformers()
    cfg = TrainConfig(model=a.model_dir, dataset=str(pc.DATASET), reward_mixer=str(pc.MIXER),
                      output_dir=tempfile.mkdtemp(prefix="rgt-prec-"), batch_size=2, group_size=8,
                      max_new_tokens=NEW_TOKENS, max_steps=10**6, eval_every=0, threads=1, device="cpu",
                      progress=False, **MODES[a.mode])
    trainer = DAPOHybridTrainer(prepare_run(cfg))
    trainer.run.model.generation_config.min_new_tokens = NEW_TOKENS  # EOS suppressed: equal work per mode
    times = []
    for step in range(1, a.warmup + a.steps + 1):
        t0 = time.perf_counter()
        trainer.train_step(step)
        if step > a.warmup:
            times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "peak_rss_mib": pc.peak_rss_mib(), **_tensor_bytes(trainer),
            "trainable": sum(p.numel() for p in trainer.run.model.parameters() if p.requires_grad),
            "parameters": sum(p.numel() for p in trainer.run.model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4m,30m")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    from rg_tracer.models import TinyModelSpec, init_model, quiet_transformers

    quiet_transformers()
    sizes, modes = a.sizes.split(","), a.modes.split(",")
    root = Path(tempfile.mkdtemp(prefix="rgt-prec-models-"))
    models = {}
    for size in sizes:
        models[size] = root / size
        init_model(models[size], TinyModelSpec(arch="qwen2", **SIZES[size]))
    results: dict[tuple[str, str], list[dict]] = {}
    rows = [(s, m) for s in sizes for m in modes]
    for repeat in range(a.repeats):
        for size, mode in rows if repeat % 2 == 0 else rows[::-1]:
            cmd = [sys.executable, __file__, "--worker", "1", "--model-dir", str(models[size]), "--mode", mode,
                   "--steps", str(a.steps), "--warmup", str(a.warmup)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **pc.THREAD_ENV})
            if out.returncode:
                print(f"{size} {mode}: failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
                continue
            results.setdefault((size, mode), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    env = pc.environment()
    print(f"{env['cpu']}, {env['cores']} cores; torch {env['torch']}; git {env['git']}; {env['date']}")
    head = f"{'size':5} {'mode':10} {'params':>8} {'trainable':>9} {'s/step':>7} {'vs fp32':>7} " \
           f"{'peak RSS':>9} {'weights':>8} {'grads':>7} {'AdamW':>7} {'KL ref':>7}  (MiB)"
    print(head)
    table = []
    for size in sizes:
        base = results.get((size, "fp32"))
        for mode in modes:
            runs = results.get((size, mode))
            if not runs:
                continue
            row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            ratio = (statistics.median(r["step_s"] for r in base) / row["step_s"]) if base else float("nan")
            table.append({"size": size, "mode": mode, **row, "speed_vs_fp32": ratio})
            print(f"{size:5} {mode:10} {row['parameters'] / 1e6:7.1f}M {row['trainable'] / 1e6:8.2f}M "
                  f"{row['step_s']:7.3f} {ratio:6.2f}x {row['peak_rss_mib']:9.0f} {row['weights_mib']:8.1f} "
                  f"{row['grads_mib']:7.1f} {row['optimizer_mib']:7.1f} {row['reference_mib']:7.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
