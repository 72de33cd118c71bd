"""Greedy held-out evaluation shared by the RL trainer and the EGGROLL search.

Each split's completions are scored by the run's scorer and averaged per axis; the caller
writes the ``eval`` records. The train split is evaluated on a fixed seeded sample, so a
train-vs-test gap compares like with like across steps.
"""

from __future__ import annotations

import random

from rg_tracer.reward_mixer import check_overlap
from rg_tracer.runtime.distributed import SINGLE
from rg_tracer.schema import eval_record
from rg_tracer.scorers import run_scorer

__all__ = ["evaluate_splits", "evaluate_run", "eval_summary"]

CHUNK = 64  # prompts per generation call
LOGGED = 8  # completions per split an eval record keeps, with their scores (the split's first prompts)


def evaluate_splits(policy, scorer, train, heldout, *, max_new_tokens: int, eval_samples: int,
                    train_order_seed: int, dist=SINGLE) -> list[tuple[str, int, dict[str, float], list[dict]]]:
    """``[(split, n, {axis: mean}, samples)]`` for the held-out split (if any) and a train
    sample; ``samples`` are the first :data:`LOGGED` prompts' completions and scores.

    Under torchrun each process evaluates a contiguous share of the prompts and the per-axis
    sums are gathered, so every rank returns the same means and no rank idles in a collective
    while another evaluates alone."""
    results = []
    for split, dataset in ([("test", heldout)] if heldout else []) + [("train", train)]:
        examples = list(dataset.examples)
        if split == "train":
            random.Random(train_order_seed).shuffle(examples)
        examples = examples[: eval_samples or None]
        mine = dist.shard(examples)
        sums: dict[str, float] = {}
        samples: list[dict] = []
        for start in range(0, len(mine), CHUNK):
            chunk = mine[start:start + CHUNK]
            rollout = policy.sample([e.prompt for e in chunk], 1, max_new_tokens, greedy=True)
            rows = run_scorer(scorer, [e.prompt for e in chunk], rollout.completions, [e.row for e in chunk])
            for e, completion, row in zip(chunk, rollout.completions, rows):
                for key, value in row.items():
                    sums[key] = sums.get(key, 0.0) + value
                if len(samples) < LOGGED and dist.is_main:
                    samples.append({"prompt_id": e.id, "prompt": e.prompt, "answer": e.answer,
                                    "completion": completion, "scores": dict(row)})
        if dist.active:
            shares, sums = dist.all_gather(sums), {}
            for share in shares:
                for key, value in share.items():
                    sums[key] = sums.get(key, 0.0) + value
        results.append((split, len(examples), {k: v / len(examples) for k, v in sums.items()}, samples))
    return results


def evaluate_run(policy, run, step: int) -> list[dict]:
    """The ``eval`` records (fields) of ``run`` (either search's prepared run) at ``step``:
    its held-out split and a train sample, greedy. Refuses a reward mixer that weights none
    of the scorer's axes before anything is written (an eval may be a run's first record)."""
    from rg_tracer.runtime.run import SALT_EVAL_ORDER, mix_seed

    cfg = run.config
    results = evaluate_splits(policy, run.scorer, run.train, run.eval, max_new_tokens=cfg.max_new_tokens,
                              eval_samples=cfg.eval_samples, train_order_seed=mix_seed(cfg.seed, 0, SALT_EVAL_ORDER),
                              dist=run.dist)
    check_overlap(run.mixer, set(results[0][2]), f"--reward-mixer {cfg.reward_mixer}")
    return [eval_record(step=step, split=split, n=n, metrics=metrics, samples=samples)
            for split, n, metrics, samples in results]


def eval_summary(records: list[dict], axes: int = 4) -> str | None:
    """One line for a terminal: the last evaluation's step and each split's first ``axes``
    axes with its prompt count, e.g. ``eval at step 1000: test (n=120) correctness 0.73 ...``."""
    if not records:
        return None
    parts = [f"{r['split']} (n={r['n']}) " + " ".join(f"{k} {v:.3f}" for k, v in list(r["metrics"].items())[:axes])
             for r in records]
    return f"eval at step {records[0]['step']}: " + "; ".join(parts)
