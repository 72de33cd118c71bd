"""Regenerate the toy-math datasets: ``python datasets/toy_math/generate.py``.

``addition_small.jsonl``: every single-digit pair ``a+b=`` except a held-out fifth
(``addition_small_test.jsonl``), chosen by a seeded shuffle. Small enough for a
randomly initialised character-level model to learn with RL in a few minutes.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent


def main(seed: int = 0, test_frac: float = 0.2) -> None:
    pairs = [(a, b) for a in range(10) for b in range(10)]
    random.Random(seed).shuffle(pairs)
    n_test = int(len(pairs) * test_frac)
    splits = {"addition_small_test.jsonl": pairs[:n_test], "addition_small.jsonl": pairs[n_test:]}
    for name, rows in splits.items():
        with open(HERE / name, "w") as f:
            for a, b in sorted(rows):
                row = {"id": f"add-{a}-{b}", "task": "addition", "prompt": f"{a}+{b}=",
                       "numbers": [a, b], "answer": str(a + b)}
                f.write(json.dumps(row) + "\n")
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
