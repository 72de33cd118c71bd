"""Synthetic ``rg-tracer/2`` logs for the analysis tests.

Every record goes through :func:`rg_tracer.schema.validate` before it is
written (unless a test asks for a broken line on purpose), so these fixtures
cannot drift from the schema the trainer writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from rg_tracer.schema import RL_KEYS, SCHEMA, validate

__all__ = [
    "run_record",
    "step_record",
    "eval_record",
    "end_record",
    "upstream_step",
    "write_log",
    "append_lines",
    "known_run",
]


def run_record(resumed_from_step: int | None = None, seed: int = 0) -> dict:
    return {
        "schema": SCHEMA, "kind": "run", "time": 1764070000.0, "config": {"lr": 1e-5},
        "versions": {"rg_tracer": "0.1.0"}, "model": {"name_or_path": "tiny", "arch": "gpt2", "parameters": 1000},
        "dataset": {"path": "datasets/x.jsonl", "rows": 10}, "seed": seed,
        "resumed_from_step": resumed_from_step, "reward_weights": {"correctness": 1.0},
    }


def _sample(i: int, rewards: dict, tags: dict | None, verifier: dict | None, task: str, completion: str):
    prompt_id = f"{task}-{i // 2:04d}"
    gepa = {"rewards": rewards, "tags": tags or {}, "verifier": verifier or {},
            "meta": {"task_id": task, "prompt_id": prompt_id}, "abstained": False}
    gen = {"prompt_id": prompt_id, "completion_id": f"{prompt_id}#{i % 2}", "prompt_tokens": 7,
           "completion_tokens": len(completion.split()), "truncated": False, "completion": completion}
    return gepa, gen


def step_record(
    step: int,
    rewards: list[dict],
    *,
    rl: dict | None = None,
    tags: list[dict] | None = None,
    verifier: list[dict] | None = None,
    tasks: list[str] | None = None,
    completions: list[str] | None = None,
) -> dict:
    """A step with one sample per entry of ``rewards``."""
    n = len(rewards)
    pairs = [
        _sample(i, rewards[i], tags[i] if tags else None, verifier[i] if verifier else None,
                tasks[i] if tasks else "addition", completions[i] if completions else f"answer {step}.{i}")
        for i in range(n)
    ]
    full_rl = {key: 0.0 for key in RL_KEYS} | {"lr": 1e-5} | (rl or {})
    return {
        "schema": SCHEMA, "kind": "step", "step": step, "time": 1764070000.0 + step, "rl": full_rl,
        "gepa": [p[0] for p in pairs], "generation": [p[1] for p in pairs],
        "curriculum": {}, "safety": {}, "timing": {"generate": 0.1, "score": 0.0, "train": 0.1, "log": 0.0},
    }


def eval_record(step: int, metrics: dict, split: str = "test", n: int = 8) -> dict:
    return {"schema": SCHEMA, "kind": "eval", "step": step, "split": split, "n": n, "metrics": metrics}


def end_record(step: int, status: str = "completed") -> dict:
    return {"schema": SCHEMA, "kind": "end", "step": step, "status": status}


def upstream_step(step: int, rewards: list[dict], rl: dict | None = None) -> dict:
    """A record shaped like the upstream project's: no schema/kind, no verifier."""
    record = step_record(step, rewards, rl=rl)
    del record["schema"], record["kind"], record["timing"]
    for sample in record["gepa"]:
        del sample["verifier"]
    return record


def _line(record: dict | str, check: bool) -> str:
    if isinstance(record, str):  # a deliberately broken line, written as is
        return record
    if check:
        validate(json.loads(json.dumps(record)))
    return json.dumps(record)


def write_log(path: Path, records: Iterable[dict | str], check: bool = True) -> Path:
    """Write records (dicts are validated; strings are raw lines) as JSONL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_line(r, check) + "\n" for r in records), encoding="utf-8")
    return path


def append_lines(path: Path, records: Iterable[dict | str], newline: bool = True) -> None:
    text = "\n".join(_line(r, True) for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text + ("\n" if newline else ""))


def known_run(
    steps: int = 240, change_at: int = 120, lead: int = 4, n_samples: int = 8, seed: int = 0
) -> list[dict]:
    """A run with planted structure the analysis must find.

    * ``correctness`` jumps from 0.2 to 0.8 at ``change_at`` (sample noise 0.05);
    * ``format`` is exactly 1.0 every step (no transitions, no correlations);
    * ``noise`` is white noise around 0.5 (no transitions);
    * ``style`` follows the RL metric ``grad_norm`` ``lead`` steps later:
      ``style[t] = grad_norm[t - lead]`` (+ small noise), so ``best_lag == lead``.
    """
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0.0, 0.1, steps + lead)) + 5.0
    records: list[dict] = [run_record(seed=seed)]
    for t in range(1, steps + 1):
        level = 0.8 if t >= change_at else 0.2
        grad_norm = float(walk[t - 1 + lead])
        style = float(walk[t - 1])  # == grad_norm of step t - lead
        rewards = [
            {
                "correctness": float(level + rng.normal(0, 0.05)),
                "format": 1.0,
                "noise": float(0.5 + rng.normal(0, 0.1)),
                "style": float(style + rng.normal(0, 0.01)),
            }
            for _ in range(n_samples)
        ]
        tasks = ["addition" if i % 2 == 0 else "sorting" for i in range(n_samples)]
        tags = [{"completion_length": float(3 + i)} for i in range(n_samples)]
        completions = [f"<b>step {t}</b> sample {i} <script>alert('x')</script>" for i in range(n_samples)]
        rl = {"grad_norm": grad_norm, "kl": float(0.01 + 0.001 * rng.normal()), "loss": float(rng.normal())}
        records.append(step_record(t, rewards, rl=rl, tags=tags, tasks=tasks, completions=completions))
        if t % 40 == 0:
            records.append(eval_record(t, {"correctness": level, "format": 1.0}))
    records.append(end_record(steps))
    return records
