"""Greedy held-out evaluation shared by the RL trainer and the EGGROLL search.

Each split's completions are scored by the run's scorer and averaged per axis; the caller
writes the ``eval`` records. The train split is evaluated on a fixed seeded sample, so a
train-vs-test gap compares like with like across steps.
"""

from __future__ import annotations

import random

from rg_tracer.scorers import run_scorer

__all__ = ["evaluate_splits"]

CHUNK = 64  # prompts per generation call


def evaluate_splits(policy, scorer, train, heldout, *, max_new_tokens: int, eval_samples: int,
                    train_order_seed: int) -> list[tuple[str, int, dict[str, float]]]:
    """``[(split, n, {axis: mean})]`` for the held-out split (if any) and a train sample."""
    results = []
    for split, dataset in ([("test", heldout)] if heldout else []) + [("train", train)]:
        examples = list(dataset.examples)
        if split == "train":
            random.Random(train_order_seed).shuffle(examples)
        examples = examples[: eval_samples or None]
        sums: dict[str, float] = {}
        for start in range(0, len(examples), CHUNK):
            chunk = examples[start:start + CHUNK]
            rollout = policy.sample([e.prompt for e in chunk], 1, max_new_tokens, greedy=True)
            for row in run_scorer(scorer, [e.prompt for e in chunk], rollout.completions, [e.row for e in chunk]):
                for key, value in row.items():
                    sums[key] = sums.get(key, 0.0) + value
        results.append((split, len(examples), {k: v / len(examples) for k, v in sums.items()}))
    return results
