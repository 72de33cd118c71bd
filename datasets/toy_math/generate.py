"""Regenerate the toy-math datasets: ``python datasets/toy_math/generate.py``.

``addition_small.jsonl``: every single-digit pair ``a+b=`` except a held-out fifth
(``addition_small_test.jsonl``), chosen by a seeded shuffle.
``addition_tiny.jsonl``: the pairs whose sum is one digit, split the same way; the
demo's task, which a randomly initialised character-level model learns with RL in
about a minute on two CPU cores (it cannot generalise: a held-out pair is an unseen
entry of a lookup table).
``add_nocarry.jsonl``: a two-digit number plus a one-digit number without a carry
(``43+5=``, 495 prompts), with 120 held out (``add_nocarry_test.jsonl``); the demo's
task. Every held-out prompt is new, but its tens digit and its units sum each occur in
training with other partners, so a model that learned to copy the tens digit and add
the units answers it; one that memorised prompts does not.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent


def write_split(stem: str, pairs: list, seed: int, test_frac: float, task: str = "addition") -> None:
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    n_test = int(len(pairs) * test_frac) if test_frac < 1 else int(test_frac)
    splits = {f"{stem}_test.jsonl": pairs[:n_test], f"{stem}.jsonl": pairs[n_test:]}
    for name, rows in splits.items():
        with open(HERE / name, "w") as f:
            for a, b in sorted(rows):
                row = {"id": f"add-{a}-{b}", "task": task, "prompt": f"{a}+{b}=",
                       "numbers": [a, b], "answer": str(a + b)}
                f.write(json.dumps(row) + "\n")
        print(f"{name}: {len(rows)} rows")


def main(seed: int = 0, test_frac: float = 0.2) -> None:
    pairs = [(a, b) for a in range(10) for b in range(10)]
    write_split("addition_small", pairs, seed, test_frac)
    write_split("addition_tiny", [(a, b) for a, b in pairs if a + b < 10], seed, test_frac)
    no_carry = [(10 * tens + a, b) for tens in range(1, 10) for a, b in pairs if a + b < 10]
    write_split("add_nocarry", no_carry, seed, 120, task="add_nocarry")


if __name__ == "__main__":
    main()
