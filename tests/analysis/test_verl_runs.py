"""verl runs as rg-tracer records (analysis/db/formats/verl.py) on a fixture in verl's format.

The fixture (tests/analysis/data/verl/grpo_run, README.md there) was written with verl's own
writer code: a rollout dump per step, a validation dump, the FileLogger metrics file and hydra's
config. 3 steps of 2 prompts x 2 rollouts; validation at steps 0, 2 and 3.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from analysis.db.formats.verl import READER, VerlFormatError, VerlWarning
from analysis.db.formats.verl_metrics import RL_NAMES, _rl
from rg_tracer.schema import RL_KEYS, validate

FIXTURE = Path(__file__).parent / "data" / "verl" / "grpo_run"


def _metrics_lines() -> dict[int, dict]:
    return {obj["step"]: obj["data"] for obj in map(json.loads, (FIXTURE / "metrics.jsonl").read_text().splitlines())}


def _dump(step: int) -> list[dict]:
    return [json.loads(line) for line in (FIXTURE / "rollout" / f"{step}.jsonl").read_text().splitlines()]


@pytest.fixture
def run_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "grpo_run"))


def _records(run_dir: Path) -> tuple[list[dict], list]:
    notes: list = []
    return list(READER.records(run_dir, notes)), notes


def test_detect(tmp_path: Path, run_copy: Path) -> None:
    assert READER.name == "verl"
    assert READER.detect(FIXTURE)
    assert not READER.detect(FIXTURE.parent)  # the folder above a run is no run
    assert not READER.detect(tmp_path / "missing")
    rg = tmp_path / "rg"
    rg.mkdir()
    (rg / "train.jsonl").write_text(json.dumps({"schema": "rg-tracer/2", "kind": "end", "step": 1,
                                                "status": "completed"}) + "\n")
    assert not READER.detect(rg)
    trl = tmp_path / "trl"
    (trl / "checkpoint-2").mkdir(parents=True)
    (trl / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": [{"loss": 0.1, "step": 1}]}))
    (trl / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert not READER.detect(trl)
    # either half alone is a verl run: the rollout dump (also as run_dir itself), or the metrics file
    assert READER.detect(run_copy / "rollout")
    shutil.rmtree(run_copy / "rollout")
    assert READER.detect(run_copy)
    (run_copy / "metrics.jsonl").unlink()
    assert not READER.detect(run_copy)  # a validation dump alone is not enough


def test_sources() -> None:
    names = [p.relative_to(FIXTURE).as_posix() for p in READER.sources(FIXTURE)]
    assert names == [".hydra/config.yaml", "metrics.jsonl", "rollout/1.jsonl", "rollout/2.jsonl", "rollout/3.jsonl",
                     "validation/0.jsonl", "validation/2.jsonl", "validation/3.jsonl"]


def test_records_validate_in_log_order() -> None:
    records, notes = _records(FIXTURE)
    assert notes == []
    assert [(r["kind"], r.get("step")) for r in records] == [
        ("run", None), ("eval", 0), ("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("eval", 3), ("end", 3)]
    for record in records:
        assert validate(record) == record  # the writers' check: everything the format promises
    run = records[0]
    assert run["model"] == {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert run["dataset"] == {"path": "~/data/gsm8k/train.parquet", "eval_path": "~/data/gsm8k/test.parquet"}
    assert run["config"]["trainer"]["total_training_steps"] == 3
    assert run["reward_weights"] == {"score": 1.0} and run["resumed_from_step"] is None
    assert records[-1]["status"] == "completed"
    assert records == list(READER.records(FIXTURE))  # a pure function of the files


def test_steps_samples_and_axes() -> None:
    steps = [r for r in _records(FIXTURE)[0] if r["kind"] == "step"]
    for record in steps:
        dump = _dump(record["step"])
        assert len(record["gepa"]) == len(record["generation"]) == len(dump) == 4
        assert {a for s in record["gepa"] for a in s["rewards"]} == {"score", "acc"}
        # prompt-major; every dump line once, with its score, acc (bool as 0/1), pred and answer
        got = sorted((g["completion"], s["rewards"]["score"], s["rewards"]["acc"], s["meta"]["pred"],
                      s["meta"]["ground_truth"]) for s, g in zip(record["gepa"], record["generation"]))
        assert got == sorted((d["output"], d["score"], float(d["acc"]), d["pred"], d["gts"]) for d in dump)
        pids = [g["prompt_id"] for g in record["generation"]]
        assert pids == sorted(pids, key=pids.index)  # grouped
        assert [g["completion_id"] for g in record["generation"]] == [f"{p}#{pids[:i].count(p)}"
                                                                      for i, p in enumerate(pids)]
        assert all(s["meta"]["prompt_id"] == g["prompt_id"] for s, g in zip(record["gepa"], record["generation"]))
    # step 1's dump is interleaved (balance_batch): prompt A, B, A, B -> A, A, B, B
    dump = _dump(1)
    assert [g["completion"] for g in steps[0]["generation"]] == [dump[i]["output"] for i in (0, 2, 1, 3)]
    assert steps[0]["generation"][0]["prompt_id"] == steps[2]["generation"][0]["prompt_id"]  # same prompt, same id


def test_rl_metrics_mapping() -> None:
    metrics = _metrics_lines()
    for record in (r for r in _records(FIXTURE)[0] if r["kind"] == "step"):
        data, rl = metrics[record["step"]], record["rl"]
        assert set(RL_KEYS) <= set(rl)
        for verl_name, name in RL_NAMES.items():
            assert rl[name] == data[verl_name] and verl_name not in rl  # one name per number
        assert rl["kl"] == data["actor/kl_loss"] and rl["kl_coeff"] == data["actor/kl_coef"]  # use_kl_loss run
        assert rl["loss"] is None  # verl logs no total loss
        for kept in ("actor/ppo_kl", "critic/advantages/max", "perf/throughput", "training/epoch"):
            assert rl[kept] == data[kept]
        assert "training/global_step" not in rl
        timing = {k: v for k, v in data.items() if k.startswith(("timing_s/", "timing_per_token_ms/"))}
        assert record["timing"] == timing and timing["timing_s/gen"] == data["timing_s/gen"]
        assert not any(k.startswith("timing") for k in rl)
        assert rl["reward_mixed_mean"] == pytest.approx(statistics.fmean(d["score"] for d in _dump(record["step"])))
        # validation numbers other than the eval means stay on the step, under verl's names
        if record["step"] == 2:
            assert rl["val-aux/openai/gsm8k/acc/std@2"] == data["val-aux/openai/gsm8k/acc/std@2"]
            assert rl["val-aux/openai/gsm8k/reward/mean@2"] == data["val-aux/openai/gsm8k/reward/mean@2"]
            assert "val-core/openai/gsm8k/acc/mean@2" not in rl and "val-aux/openai/gsm8k/score/mean@2" not in rl


def test_kl_choice() -> None:
    in_reward = _rl({"actor/kl_loss": 0.0, "actor/reward_kl_penalty": 0.02, "actor/reward_kl_penalty_coeff": 0.001})
    assert (in_reward["kl"], in_reward["kl_coeff"], in_reward["actor/kl_loss"]) == (0.02, 0.001, 0.0)
    off = _rl({"actor/kl_loss": 0.0, "actor/pg_loss": 0.1})
    assert off["kl"] is None and off["policy_loss"] == 0.1 and "kl_coeff" not in off


def test_evals() -> None:
    metrics = _metrics_lines()
    evals = [r for r in _records(FIXTURE)[0] if r["kind"] == "eval"]
    assert [(e["step"], e["split"], e["n"]) for e in evals] == [(0, "openai/gsm8k", 2), (2, "openai/gsm8k", 2),
                                                                (3, "openai/gsm8k", 2)]
    for e in evals:
        data = metrics[e["step"]]
        assert e["metrics"] == {"score": data["val-aux/openai/gsm8k/score/mean@2"],
                                "acc": data["val-core/openai/gsm8k/acc/mean@2"]}
        assert len(e["samples"]) == 2 and all(set(s["scores"]) == {"score", "acc"} for s in e["samples"])
    assert evals[1]["samples"][0]["completion"] == "80% of 10 is 8, so 10 + 8 = 18.\n#### 18"


def test_corrupt_step_file(run_copy: Path) -> None:
    bad = run_copy / "rollout" / "2.jsonl"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join([lines[0], '{"input": "cut off', *lines[2:]]) + "\n")
    records, notes = _records(run_copy)
    assert len(notes) == 1 and notes[0][0] == str(bad)
    assert "line 2: not JSON" in notes[0][1] and "samples are left out" in notes[0][1]
    steps = {r["step"]: r for r in records if r["kind"] == "step"}
    assert sorted(steps) == [1, 2, 3]
    assert steps[2]["gepa"] == [] and steps[2]["rl"]["policy_loss"] == _metrics_lines()[2]["actor/pg_loss"]
    assert len(steps[1]["gepa"]) == len(steps[3]["gepa"]) == 4
    with pytest.warns(VerlWarning, match=r"2\.jsonl: line 2: not JSON"):
        assert list(READER.records(run_copy)) == records


def test_dump_only_run(tmp_path: Path, run_copy: Path) -> None:
    """Without a metrics file: the dump's steps with null metrics; the newest dump, still being
    written (no final newline), waits; a cut-off older dump loses its step, with a note."""
    (run_copy / "metrics.jsonl").unlink()
    newest = run_copy / "rollout" / "3.jsonl"
    newest.write_bytes(newest.read_bytes()[:-40])
    records, notes = _records(run_copy)
    assert notes == []
    assert [(r["kind"], r.get("step")) for r in records] == [("run", None), ("step", 1), ("step", 2)]
    assert all(r["rl"]["policy_loss"] is None and len(r["gepa"]) == 4 for r in records[1:])
    older = run_copy / "rollout" / "1.jsonl"
    older.write_bytes(older.read_bytes()[:-1])
    records, notes = _records(run_copy)
    assert [r.get("step") for r in records] == [None, 2]
    assert notes == [(str(older), "the last line is cut off (verl ends every dump with a newline); "
                                  "the step is left out")]


def test_incremental_prefix(run_copy: Path) -> None:
    """Mid-run (metrics logged to step 2, step 3's dump written, its metrics line half written):
    the records are a prefix of the finished run's, so a converter can append."""
    full = list(READER.records(FIXTURE))
    metrics = run_copy / "metrics.jsonl"
    lines = metrics.read_bytes().split(b"\n")
    metrics.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:50])
    partial, notes = _records(run_copy)
    assert notes == []
    assert [(r["kind"], r.get("step")) for r in partial] == [("run", None), ("eval", 0), ("step", 1), ("step", 2),
                                                             ("eval", 2)]
    assert partial == full[:len(partial)]


def test_ambiguous_run_dir(run_copy: Path) -> None:
    shutil.copy(run_copy / "metrics.jsonl", run_copy / "other_experiment.jsonl")
    with pytest.raises(VerlFormatError, match="several verl metrics files.*metrics.jsonl, other_experiment.jsonl"):
        list(READER.records(run_copy))


def test_records_ingest(tmp_path: Path) -> None:
    """The records written as an rg-tracer log go through the real ingester without a bad line."""
    from analysis import ingest, open_runs

    log = tmp_path / "runs" / "verl-grpo" / "train.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps(r) + "\n" for r in READER.records(FIXTURE)))
    result = ingest(tmp_path / "runs", progress=False)
    assert result.n_errors == 0
    with open_runs(tmp_path / "runs", ingest_new=False) as runs:
        axes = runs.axes()
        assert sorted(axes["axis"].unique().to_list()) == ["acc", "score"] and axes.height == 24
        evals = runs.evals()
        assert sorted(set(evals["step"].to_list())) == [0, 2, 3] and set(evals["n"].to_list()) == {2}
        metrics = runs.metrics()
        kl = metrics.filter(metrics["metric"] == "kl").sort("step")["value"].to_list()
        assert kl == [_metrics_lines()[s]["actor/kl_loss"] for s in (1, 2, 3)]
        assert runs.ingest_notes().is_empty()


def test_ingest_through_registry(tmp_path: Path) -> None:
    """``analysis.ingest`` finds the verl run under RUNS_DIR, converts it, and on the next ingest
    appends what the run wrote since; a corrupt step file reaches the notes by name."""
    from analysis import ingest, open_runs
    from analysis.db.formats import FORMATS

    assert "verl" in FORMATS

    runs_dir = tmp_path / "runs"
    run = Path(shutil.copytree(FIXTURE, runs_dir / "verl-grpo"))
    metrics = run / "metrics.jsonl"
    full = metrics.read_bytes()
    metrics.write_bytes(b"\n".join(full.split(b"\n")[:3]) + b"\n")  # mid-run: logged to step 2
    first = ingest(runs_dir, progress=False)
    assert first.n_errors == 0 and first.notes == [] and [f.run_id for f in first.files] == ["verl-grpo"]
    metrics.write_bytes(full)
    bad = run / "rollout" / "3.jsonl"
    bad.write_bytes(bad.read_bytes()[:-1])
    second = ingest(runs_dir, progress=False)
    assert second.n_errors == 0 and not second.files[0].restarted  # appended, not read again
    assert any(str(bad) in n and "cut off" in n for n in second.notes)
    with open_runs(runs_dir, ingest_new=False) as runs:
        row = runs.runs().row(0, named=True)
        assert (row["run_id"], row["n_steps"], row["n_samples"], row["status"]) == ("verl-grpo", 3, 8, "completed")
        assert sorted(runs.axes()["axis"].unique().to_list()) == ["acc", "score"]
        assert sorted(set(runs.evals()["step"].to_list())) == [0, 2, 3]
