"""``rg-tracer export tensorboard``: events read back with TensorBoard's own reader match the database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from synth import eval_record, known_run, run_record, write_log

from rg_tracer.cli import cli
from tests.helpers import assert_one_line_error, invoke

pytest.importorskip("tensorboard")


def read_events(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the event files in ``run_dir``, read by TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step written twice"
        out[tag] = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events}
    return out


def expected(runs_dir: Path, run_id: str) -> dict[str, dict[int, float]]:
    """The same scalars, straight from the database."""
    from analysis import open_runs

    with open_runs(runs_dir) as runs:
        stats, metrics, evals = runs.step_stats(run_id), runs.metrics(run_id), runs.evals(run_id)
    out: dict[str, dict[int, float]] = {}
    for row in stats.iter_rows(named=True):
        out.setdefault(f"{row['kind']}/{row['axis']}", {})[row["step"]] = row["mean"]
    for row in metrics.iter_rows(named=True):
        out.setdefault(f"rl/{row['metric']}", {})[row["step"]] = row["value"]
    for row in evals.iter_rows(named=True):
        out.setdefault(f"eval/{row['split']}/{row['axis']}", {})[row["step"]] = row["value"]
    return out


@pytest.fixture
def two_runs(runs_dir: Path) -> Path:
    write_log(runs_dir / "exp1" / "train.jsonl", known_run(steps=40, change_at=20))
    write_log(runs_dir / "sweep" / "lr-2" / "train.jsonl",
              known_run(steps=30, change_at=10, seed=3)[:-1] + [eval_record(30, {"correctness": 0.5}, split="train")])
    return runs_dir


def test_events_match_the_database(two_runs, tmp_path):
    out = tmp_path / "tb"
    result = invoke(cli, "export", "tensorboard", two_runs, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"2 runs written to {out}" in result.output
    for run_id in ("exp1", "sweep/lr-2"):
        got, want = read_events(out / run_id), expected(two_runs, run_id)
        assert set(got) == set(want)
        for tag, points in want.items():
            assert sorted(got[tag]) == sorted(points), tag
            np.testing.assert_allclose([got[tag][s] for s in sorted(points)], [points[s] for s in sorted(points)],
                                       rtol=1e-6, atol=1e-7, err_msg=tag)  # stored as float32
    exp1 = read_events(out / "exp1")
    assert {"reward/correctness", "reward/format", "tag/completion_length", "rl/grad_norm", "rl/kl",
            "eval/test/correctness", "eval/test/format"} <= set(exp1)
    assert sorted(exp1["reward/correctness"]) == list(range(1, 41))
    assert exp1["eval/test/correctness"] == {40: pytest.approx(0.8)}
    assert exp1["reward/format"][7] == pytest.approx(1.0)
    assert read_events(out / "sweep" / "lr-2")["eval/train/correctness"] == {30: pytest.approx(0.5)}


def test_a_second_export_replaces_only_the_event_files_of_the_runs_it_writes(two_runs, tmp_path):
    out = tmp_path / "tb"
    assert invoke(cli, "export", "tensorboard", two_runs, "--out", out).exit_code == 0
    (out / "exp1" / "notes.txt").write_text("mine")
    (out / "other-run").mkdir()
    (out / "other-run" / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    result = invoke(cli, "export", "tensorboard", two_runs, "--out", out)
    assert result.exit_code == 0, result.output
    assert len(list((out / "exp1").glob("events.out.tfevents.*"))) == 1
    assert len(list((out / "sweep" / "lr-2").glob("events.out.tfevents.*"))) == 1
    assert (out / "exp1" / "notes.txt").read_text() == "mine"
    assert (out / "other-run" / "events.out.tfevents.1.host.1.0").exists()
    assert set(read_events(out / "exp1")) == set(expected(two_runs, "exp1"))


def test_a_run_without_steps_is_left_out_with_a_note(runs_dir, tmp_path):
    write_log(runs_dir / "a" / "train.jsonl", known_run(steps=3, change_at=2))
    write_log(runs_dir / "b" / "train.jsonl", [run_record()])
    result = invoke(cli, "export", "tensorboard", runs_dir, "--out", tmp_path / "tb")
    assert result.exit_code == 0, result.output
    assert "note: left out (no step or eval logged yet): b" in result.output
    assert not (tmp_path / "tb" / "b").exists()


@pytest.mark.parametrize("case, message", [
    ("empty", "no run logs (*.jsonl) under"),
    ("missing", "is not a directory"),
    ("no-steps", "logged no step or eval yet"),
    ("run-dir-is-a-file", "is a file; the events of run 'a' go in a directory of that name"),
])
def test_bad_input_is_one_line(case, message, runs_dir, tmp_path):
    out = tmp_path / "tb"
    if case == "no-steps":
        write_log(runs_dir / "a" / "train.jsonl", [run_record()])
    if case == "run-dir-is-a-file":
        write_log(runs_dir / "a" / "train.jsonl", known_run(steps=3, change_at=2))
        out.mkdir()
        (out / "a").write_text("")
    source = tmp_path / "nope" if case == "missing" else runs_dir
    assert_one_line_error(invoke(cli, "export", "tensorboard", source, "--out", out), message)


def test_an_out_that_is_a_file_is_a_usage_error(runs_dir, tmp_path):
    (tmp_path / "tb").write_text("")
    result = invoke(cli, "export", "tensorboard", runs_dir, "--out", tmp_path / "tb")
    assert result.exit_code == 2 and "is a file" in result.output


def test_scalar_series_is_pure_and_names_the_tags():
    from analysis.tensorboard_export import scalar_series

    stats = pl.DataFrame({"run_id": ["r", "r"], "kind": ["reward", "tag"], "axis": ["c", "len"], "step": [1, 1],
                          "n": [2, 2], "mean": [0.5, 3.0], "std": [0.1, 0.0]})
    metrics = pl.DataFrame({"run_id": ["r"], "step": [1], "metric": ["upstream/x"], "value": [2.0]})
    evals = pl.DataFrame({"run_id": ["r"], "segment": [0], "step": [1], "split": ["test"], "n": [4],
                          "axis": ["c"], "value": [None]}, schema_overrides={"value": pl.Float64})
    series = scalar_series(stats, metrics, evals)
    assert series.rows() == [("r", "reward/c", 1, 0.5), ("r", "rl/upstream/x", 1, 2.0), ("r", "tag/len", 1, 3.0)]
    assert scalar_series(stats.clear(), metrics.clear(), evals.clear()).is_empty()


def test_importing_the_exporter_loads_neither_torch_nor_tensorboard():
    from tests.test_import_graph import heavy_chains, scan

    chains = heavy_chains(scan(), heavy=("torch", "transformers", "tensorboard"))
    assert "analysis" not in chains and "analysis.tensorboard_export" not in chains, chains
