"""TRL's GRPOTrainer output directories, analysed as runs (analysis/db/formats/trl.py, docs/peers.md).

A real tiny GRPOTrainer (trl 1.16, a randomly initialised 1-layer Qwen2, two reward functions)
trains a few steps on CPU; the tests then analyse what it left on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from synth import known_run, write_log

pytest.importorskip("trl")

STEPS = 6
GENERATIONS = 4
REWARDS = ("correct", "brevity")
DATA = Path(__file__).resolve().parents[2] / "datasets" / "toy_math" / "addition_small.jsonl"


def correct(completions, answer, **kwargs):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]


def brevity(completions, **kwargs):
    return [-len(c) / 4 for c in completions]


def _train(model_dir: Path, out: Path, log_completions: bool) -> Path:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:8]]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    config = GRPOConfig(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4,
                        num_generations=GENERATIONS, max_completion_length=4, logging_steps=1, save_steps=3,
                        report_to=[], use_cpu=True, seed=0, beta=0.04, log_completions=log_completions,
                        num_completions_to_print=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[correct, brevity], args=config,
                          train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.train()
    return out


@pytest.fixture(scope="module")
def trl_runs(tmp_path_factory) -> dict[str, Path]:
    """Two real GRPOTrainer output directories: with completions (log_completions=True), and
    metrics only (the default)."""
    from rg_tracer.models import TinyModelSpec, init_model

    root = tmp_path_factory.mktemp("trl")
    init_model(root / "model", TinyModelSpec(arch="qwen2", layers=1, hidden=32, heads=2))
    return {"full": _train(root / "model", root / "made" / "full", True),
            "metrics": _train(root / "model", root / "made" / "metrics", False)}


def _log_history(run: Path) -> list[dict]:
    return json.loads((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())["log_history"]


def test_a_grpo_run_with_completions_has_one_axis_per_reward_function(trl_runs, tmp_path):
    from analysis import analyze_runs, open_runs
    from analysis.db.formats.trl import RENAMED

    runs = tmp_path / "runs"
    shutil.copytree(trl_runs["full"], runs / "grpo")
    assert sorted(p.name for p in (runs / "grpo" / "completions").iterdir()) == [
        f"completions_{s:05d}.parquet" for s in range(1, STEPS + 1)]
    index = analyze_runs(runs, tmp_path / "report")
    assert (tmp_path / "report" / "grpo" / "index.html").is_file() and index.is_file()
    with open_runs(runs, ingest_new=False) as db:
        run = db.runs().row(0, named=True)
        assert (run["run_id"], run["status"], run["n_steps"]) == ("grpo", "completed", STEPS)
        assert run["log_path"] == str((runs / "grpo").resolve())  # the real directory, not the converted log
        axes = db.axes("grpo")
        assert set(axes["axis"]) == set(REWARDS) and set(axes["kind"]) == {"reward"}
        for axis in REWARDS:  # every sample of every step, per reward function
            per_step = axes.filter(axes["axis"] == axis).group_by("step").len().sort("step")
            assert per_step["step"].to_list() == list(range(1, STEPS + 1))
            assert set(per_step["len"]) == {GENERATIONS}
        samples = db.samples("grpo")
        assert samples["completion_id"][0].endswith("#0") and samples["prompt_tokens"].min() > 0
        # The sample means are TRL's own rewards/<func>/mean, step by step.
        stats = db.step_stats("grpo")
        metrics = db.metrics("grpo")
        history = {e["step"]: e for e in _log_history(trl_runs["full"]) if "loss" in e}
        for e in history.values():
            for axis in REWARDS:
                mean = stats.filter((stats["axis"] == axis) & (stats["step"] == e["step"]))["mean"][0]
                assert mean == pytest.approx(e[f"rewards/{axis}/mean"], abs=1e-6)
        _assert_mapped(metrics, history, RENAMED)
        weights = json.loads(db.first_run_records()["reward_weights"][0])
        assert weights == {axis: 1.0 for axis in REWARDS}


def _assert_mapped(metrics, history: dict[int, dict], renamed: dict[str, str]) -> None:
    """Every TRL metric is under the name docs/peers.md gives it, with TRL's value."""
    names = set(metrics["metric"])
    for trl_name, ours in renamed.items():
        if any(trl_name in e for e in history.values()):
            assert ours in names, trl_name
            if trl_name != ours:
                assert trl_name not in names
    assert {f"reward_mean/{a}" for a in REWARDS} | {f"reward_std/{a}" for a in REWARDS} <= names
    assert not any(n.startswith("rewards/") for n in names) and "learning_rate" not in names
    assert "kl_coeff" in names and "clip_ratio/region_mean" in names  # beta from training_args.bin; TRL's own
    value = {(r["step"], r["metric"]): r["value"] for r in metrics.iter_rows(named=True)}
    for step, e in history.items():
        assert value[(step, "lr")] == pytest.approx(e["learning_rate"])
        assert value[(step, "reward_mixed_mean")] == pytest.approx(e["reward"])
        assert value[(step, "completion_length_mean")] == pytest.approx(e["completions/mean_length"])
        assert value[(step, "truncated_frac")] == pytest.approx(e["completions/clipped_ratio"])
        assert value[(step, "reward_mean/brevity")] == pytest.approx(e["rewards/brevity/mean"])
        assert value[(step, "kl_coeff")] == pytest.approx(0.04)


def test_a_metrics_only_run_is_analysed_with_a_note_on_what_is_missing(trl_runs, tmp_path):
    from analysis import open_runs
    from rg_tracer.cli.analyze import analyze_command

    runs = tmp_path / "runs"
    shutil.copytree(trl_runs["metrics"], runs / "metrics-only")
    assert not (runs / "metrics-only" / "completions").exists()  # TRL's default keeps no completions
    result = CliRunner().invoke(analyze_command, [str(runs), "--out", str(tmp_path / "report"), "--format", "trl"])
    assert result.exit_code == 0, result.output
    assert "no per-sample completions" in result.output and "log_completions=True" in result.output
    index = (tmp_path / "report" / "index.html").read_text()
    assert "no per-sample completions" in index and (tmp_path / "report" / "metrics-only" / "index.html").is_file()
    page = (tmp_path / "report" / "metrics-only" / "index.html").read_text()
    assert "<h2>RL metrics</h2>" in page and (tmp_path / "report" / "metrics-only" / "metrics.png").is_file()
    with open_runs(runs, ingest_new=False) as db:
        assert db.runs()["n_samples"].to_list() == [0] and db.axes().is_empty()
        metrics = db.metrics()
        for axis in REWARDS:  # the reward functions as step means, at every step
            steps = metrics.filter(metrics["metric"] == f"reward_mean/{axis}")["step"].to_list()
            assert steps == list(range(1, STEPS + 1))
        history = {e["step"]: e for e in _log_history(trl_runs["metrics"]) if "loss" in e}
        from analysis.db.formats.trl import RENAMED

        _assert_mapped(metrics, history, RENAMED)


def test_a_corrupt_trainer_state_is_named_and_the_other_runs_are_read(trl_runs, tmp_path):
    from analysis import ingest, open_runs

    runs = tmp_path / "runs"
    shutil.copytree(trl_runs["full"], runs / "good")
    shutil.copytree(trl_runs["metrics"], runs / "broken")
    write_log(runs / "native" / "train.jsonl", known_run(steps=30))  # mixed formats: each its own reader
    for step in (3, STEPS):
        (runs / "broken" / f"checkpoint-{step}" / "trainer_state.json").write_text('{"global_step": 6, "log_hist')
    result = ingest(runs, progress=False)
    bad = runs.resolve() / "broken" / f"checkpoint-{STEPS}" / "trainer_state.json"
    assert any(n.startswith(f"{bad}: not valid JSON") and "broken (trl) left out" in n for n in result.notes), \
        result.notes
    assert sorted(f.run_id for f in result.files) == ["good", "native"]
    with open_runs(runs, ingest_new=False) as db:
        assert db.run_ids() == ["good", "native"]
    # Mended: the run is read on the next ingest; unchanged, it is not converted again.
    shutil.rmtree(runs / "broken")
    shutil.copytree(trl_runs["metrics"], runs / "broken")
    assert "broken" in [f.run_id for f in ingest(runs, progress=False).files]
    converted = runs / ".rg-tracer" / "converted" / "broken" / "train.jsonl"
    before = converted.stat().st_mtime_ns
    again = ingest(runs, progress=False)
    assert converted.stat().st_mtime_ns == before and all(f.new_lines == 0 for f in again.files)


def test_the_format_can_be_forced_and_an_unknown_directory_lists_the_formats(trl_runs, tmp_path):
    from analysis import IngestError, ingest
    from analysis.db.formats import FORMATS
    from rg_tracer.cli.analyze import FORMAT_CHOICES

    assert FORMAT_CHOICES == ("auto", *FORMATS)
    runs = tmp_path / "runs"
    shutil.copytree(trl_runs["metrics"], runs / "trl-run")
    with pytest.raises(IngestError, match="no rg-tracer runs|no \\*.jsonl logs") as info:
        ingest(runs, progress=False, format="rg-tracer")
    assert "formats known: rg-tracer" in str(info.value) and "trl (" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no \\*.jsonl logs under") as info:
        ingest(tmp_path / "empty", progress=False)
    assert "trl (" in str(info.value) and "checkpoint-<N>/trainer_state.json" in str(info.value)
    with pytest.raises(IngestError, match="unknown format 'tensorboard'"):
        ingest(runs, progress=False, format="tensorboard")
