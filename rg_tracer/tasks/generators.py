"""Generators: modular arithmetic (Power et al. 2022), n-digit addition, sparse parity."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rg_tracer.errors import UserError

__all__ = ["GENERATORS", "Split", "check_count", "check_disjoint", "make_split", "write_split", "is_prime"]

OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
#: Largest --count: a dataset is written in one go, in memory.
MAX_COUNT = 1_000_000
#: Largest modulus: the modular task writes every pair, p² items (1,000,000 at p = 1000).
MAX_P = 1000
#: Most digits per addend: answers stay below 1e308, the float range scorers compare numbers in.
MAX_DIGITS = 300
#: Most bits per parity string: a prompt is n + 1 characters, and models hold a few hundred positions.
MAX_BITS = 1000


def check_count(count: int, flag: str = "--count") -> None:
    if not 1 <= count <= MAX_COUNT:
        raise UserError(f"{flag} {count} must be in [1, {MAX_COUNT:,}]")


@dataclass(frozen=True)
class Split:
    task: str
    params: dict
    train: list[dict]
    test: list[dict]


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def _modular_answer(a: int, op: str, b: int, p: int) -> int:
    if op == "+":
        return (a + b) % p
    if op == "-":
        return (a - b) % p
    if op == "*":
        return (a * b) % p
    return (a * pow(b, -1, p)) % p  # b / a mod p via the modular inverse (p prime)


def modular(p: int = 97, op: str = "+", **_) -> list[dict]:
    """Every pair ``a op b mod p`` once; division skips ``b = 0``."""
    if op not in OPS:
        raise UserError(f"--op {op!r}: choose one of {' '.join(OPS)}")
    if not 2 <= p <= MAX_P:
        raise UserError(f"--p {p} must be in [2, {MAX_P}]: the modular task writes every pair, p² items "
                        f"({MAX_P**2:,} at p = {MAX_P})")
    if op == "/" and not is_prime(p):
        raise UserError(f"--p {p} is not prime; division mod p needs a prime modulus (e.g. 97)")
    rows = []
    for a in range(p):
        for b in range(1 if op == "/" else 0, p):
            rows.append({"id": f"mod{p}-{OPS[op]}-{a}-{b}", "task": f"mod{p}_{OPS[op]}", "prompt": f"{a}{op}{b}=",
                         "numbers": [a, b], "modulus": p, "op": op, "answer": str(_modular_answer(a, op, b, p))})
    return rows


def addition(digits: int = 3, count: int = 2000, seed: int = 0, **_) -> list[dict]:
    """``count`` distinct pairs of ``digits``-digit numbers (carries included as they fall)."""
    if not 1 <= digits <= MAX_DIGITS:
        raise UserError(f"--digits {digits} must be in [1, {MAX_DIGITS}]: scorers compare answers as floats, "
                        "below 1e308")
    check_count(count)
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    pairs_available = (high - low + 1) ** 2
    if count > pairs_available:
        raise UserError(f"--count {count} exceeds the {pairs_available} distinct {digits}-digit pairs; lower it")
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < count:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append({"id": f"add{digits}-{a}-{b}", "task": f"addition_{digits}d", "prompt": f"{a}+{b}=",
                     "numbers": [a, b], "answer": str(a + b)})
    return rows


def parity(n: int = 10, k: int = 3, count: int = 1000, seed: int = 0, **_) -> list[dict]:
    """Bit strings of length ``n``; the answer is the parity of ``k`` secret positions."""
    if not 1 <= n <= MAX_BITS:
        raise UserError(f"--n {n} must be in [1, {MAX_BITS}]: a prompt is n + 1 characters")
    if not 1 <= k <= n:
        raise UserError(f"--k {k} must be in [1, --n {n}]")
    check_count(count)
    if count > 2**n:
        raise UserError(f"--count {count} exceeds the {2**n} strings of {n} bits; lower it or raise --n")
    rng = random.Random(seed)
    secret = sorted(rng.sample(range(n), k))
    values = rng.sample(range(2**n), count)
    rows = []
    for v in values:
        bits = format(v, f"0{n}b")
        rows.append({"id": f"par{n}-{k}-{bits}", "task": f"parity_{n}_{k}", "prompt": f"{bits}=",
                     "bits": bits, "secret": secret, "answer": str(sum(int(bits[i]) for i in secret) % 2)})
    return rows


def _check_answer(row: dict) -> bool:
    """Recompute an answer by a different route than its generator."""
    c = int(row["answer"])
    if "modulus" in row:
        (a, b), p = row["numbers"], row["modulus"]
        residue = {"+": c - a - b, "-": c - a + b, "*": c - a * b, "/": c * b - a}[row["op"]]
        return 0 <= c < p and residue % p == 0
    if "secret" in row:
        return c == [row["bits"][i] for i in row["secret"]].count("1") % 2
    a, b = row["numbers"]
    return c - b == a


GENERATORS: dict[str, Callable[..., list[dict]]] = {"modular": modular, "addition": addition, "parity": parity}


def _digest(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def check_disjoint(split: Split) -> None:
    """No prompt twice in train and no test prompt in train (by SHA-256 of the prompt text)."""
    train_hashes = {_digest(r["prompt"]) for r in split.train}
    leaked = [r["prompt"] for r in split.test if _digest(r["prompt"]) in train_hashes]
    if leaked or len(train_hashes) != len(split.train):
        raise AssertionError(f"{split.task}: duplicate or leaked prompts, e.g. {leaked[:3]}")


def make_split(task: str, *, train_frac: float = 0.5, seed: int = 0, **params) -> Split:
    """Generate, shuffle by ``seed`` and split by ``train_frac``; verify before returning."""
    if task not in GENERATORS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(GENERATORS)}")
    if not 0 < train_frac < 1:
        raise UserError(f"--train-frac {train_frac} must be in (0, 1), e.g. 0.5")
    rows = GENERATORS[task](seed=seed, **params)
    random.Random(seed).shuffle(rows)
    n_train = round(len(rows) * train_frac)
    if not 0 < n_train < len(rows):
        raise UserError(f"--train-frac {train_frac} of {len(rows)} items leaves an empty split")
    split = Split(task, {"seed": seed, "train_frac": train_frac, **params}, rows[:n_train], rows[n_train:])
    check_disjoint(split)
    wrong = [r["id"] for r in split.train + split.test if not _check_answer(r)]
    if wrong:
        raise AssertionError(f"{task}: wrong answers for {wrong[:3]}")
    return split


def write_split(split: Split, out_dir: str | Path, verified_by: str | None = None) -> dict:
    """Write train/test JSONL and dataset.json atomically enough: refuse to overwrite.

    ``verified_by`` names what checked the answers when it is not this module's own recomputation."""
    out_dir = Path(out_dir)
    targets = [out_dir / "train.jsonl", out_dir / "test.jsonl"]
    if any(t.exists() for t in targets):
        raise UserError(f"{out_dir} already holds a dataset; choose another --out or remove it")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, rows in zip(targets, (split.train, split.test)):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
    info = {"task": split.task, "params": split.params, "train": len(split.train), "test": len(split.test),
            "disjoint_by": "sha256(prompt)", "answers_verified": True}
    if verified_by:
        info["answers_verified_by"] = verified_by
    (out_dir / "dataset.json").write_text(json.dumps(info, indent=1))
    return info
