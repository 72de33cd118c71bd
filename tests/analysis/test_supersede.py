"""The ingester's vectorised supersession is the schema's one rule (rg_tracer.schema.supersede)."""

import random

import numpy as np
import pytest

from analysis.db._records import supersede as vectorised
from rg_tracer.schema import supersede


def _random_log(rng: random.Random) -> list[dict]:
    records, step = [], 0
    for _ in range(rng.randrange(1, 5)):  # segments
        k = rng.choice([None, 0, max(0, step - rng.randrange(0, 4))])
        records.append({"kind": "run", "resumed_from_step": k})
        step = k or 0
        for _ in range(rng.randrange(0, 8)):
            step += rng.choice([0, 1, 1, 2])  # 0: the same step logged twice
            records.append({"kind": "step", "step": step})
            if rng.random() < 0.3:
                records.append({"kind": "eval", "step": step, "split": rng.choice(["test", "train"])})
    return records


@pytest.mark.parametrize("seed", range(200))
def test_ingester_keeps_what_the_schema_rule_keeps(seed):
    records = _random_log(random.Random(seed))
    for ln, record in enumerate(records):
        record["ln"] = ln
    expected = {r["ln"] for r in supersede(records) if r["kind"] in ("step", "eval")}
    steps = [r for r in records if r["kind"] == "step"]
    evals = [r for r in records if r["kind"] == "eval"]
    runs = [(r["ln"], r) for r in records if r["kind"] == "run"]
    out = vectorised(np.array([r["ln"] for r in steps]), np.array([r["step"] for r in steps]), runs,
                     [(r["ln"], r["step"], r["split"]) for r in evals], 0)
    kept = {r["ln"] for r, keep in zip(steps, out.keep_steps) if keep}
    kept |= {r["ln"] for r, keep in zip(evals, out.keep_evals) if keep}
    assert kept == expected


def test_a_fresh_start_supersedes_everything_before_it_and_a_resume_only_later_steps():
    log = [{"kind": "run", "resumed_from_step": None}, {"kind": "step", "step": 1}, {"kind": "step", "step": 2},
           {"kind": "run", "resumed_from_step": 1}, {"kind": "step", "step": 2},
           {"kind": "run", "resumed_from_step": None}, {"kind": "step", "step": 1}]
    assert [r.get("step") for r in supersede(log[:5])] == [None, 1, None, 2]
    assert [(r["kind"], r.get("step")) for r in supersede(log)] == [("run", None), ("run", None), ("run", None),
                                                                     ("step", 1)]
