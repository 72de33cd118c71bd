"""Logs written before rg-tracer/2 stay readable: an explicit upgrade from rg-tracer/1.

The fixtures under data/v1/ were written by rg-tracer at commit 18ae734 (the last /1 writer):
a 4-step DAPO run (one SFT step, KL on, evals every 2 steps) and a 2-generation EGGROLL search.
"""

import json
import shutil
from pathlib import Path

import pytest

from analysis import open_runs
from rg_tracer.schema import ES_KEYS, RL_KEYS, SCHEMA, UPSTREAM_PREFIX, upgrade, validate

V1 = Path(__file__).parent / "data" / "v1"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_v1_rl_steps_keep_rg_tracer_names_and_move_upstream_metrics_without_duplicates():
    raw = [r for r in _records(V1 / "rl" / "train.jsonl") if r["kind"] == "step" and r["phase"] == "rl"]
    assert raw and all(r["schema"] == "rg-tracer/1" for r in raw)
    for old in raw:
        new = validate(old)
        rl = new["rl"]
        assert new["schema"] == SCHEMA and set(RL_KEYS) <= set(rl)
        assert {k: rl[k] for k in RL_KEYS} == {k: old["rl"][k] for k in RL_KEYS}  # values untouched
        ours = {k for k in rl if not k.startswith(UPSTREAM_PREFIX)}
        assert not any("/" in k and k.split("/")[0] in ("loss", "kl", "reward", "reward_scalar", "policy")
                       for k in ours), ours
        assert rl[UPSTREAM_PREFIX + "loss/policy"] == old["rl"]["loss/policy"]  # uncorrected: kept, namespaced
        assert rl[UPSTREAM_PREFIX + "kl/coeff"] == old["rl"]["kl/coeff"]
        for duplicate in ("loss/total", "kl/value", "reward/mean"):  # exact repeats of loss, kl, reward_mixed_mean
            assert duplicate in old["rl"] and UPSTREAM_PREFIX + duplicate not in rl
        assert old["rl"]["loss/total"] == rl["loss"] and old["rl"]["kl/value"] == rl["kl"]


def test_v1_es_steps_get_an_es_object_and_lose_the_pseudo_rl_values():
    raw = [r for r in _records(V1 / "es" / "train.jsonl") if r["kind"] == "step"]
    assert len(raw) == 2
    for old in raw:
        new = upgrade(old)
        validate(new)
        assert new["es"]["fitness_mean"] == old["rl"]["fitness/mean"] == -old["rl"]["loss"]
        assert set(ES_KEYS) <= set(new["es"]) and new["es"]["member_fitness"] == old["es"]["member_fitness"]
        assert not {"loss", "policy_loss", "grad_norm", "kl", "clip_ratio"} & set(new["rl"])
        assert not any(k.startswith(("fitness/", "es/")) for k in new["rl"])


def test_a_v1_log_ingests_like_a_v2_log(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(V1, runs)
    with open_runs(runs) as db:
        assert db.ingest_errors().height == 0
        metrics = db.metrics()
        es = metrics.filter(metrics["run_id"] == "es")
        rl = metrics.filter(metrics["run_id"] == "rl")
        assert set(es["metric"]) >= {"es/fitness_mean", "es/update_norm"} and "loss" not in set(es["metric"])
        assert {"loss", "kl", "upstream/loss/policy"} <= set(rl["metric"]) and "loss/total" not in set(rl["metric"])
        assert sorted(set(rl["step"])) == [1, 2, 3, 4] and sorted(set(es["step"])) == [1, 2]
        evals = db.evals().select("run_id", "step", "split").unique()
        assert evals.height == 8 + 6  # rl: steps 0, 1 (warm-up end), 2, 4; es: 0, 1, 2; two splits each


def test_an_unknown_schema_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown schema 'rg-tracer/9'"):
        validate({"schema": "rg-tracer/9", "kind": "end", "step": 1, "status": "completed"})
