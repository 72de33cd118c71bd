"""Checkpoints a run can trust: checked before use (a bad one is set aside for the previous good
one, or the run stops naming the file), written durably, rotated; a run finished but for its
``end`` record; ``--resume`` with changed options."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rg_tracer.cli import cli
from rg_tracer.models import TinyModelSpec, init_model
from rg_tracer.runtime.checkpoint import latest_checkpoint
from tests.helpers import MIXER, REPO, TOY, invoke, read_log

TINY = os.path.join(REPO, "datasets", "toy_math", "addition_tiny.jsonl")


def train_args(model, out, *extra):
    return ["train", "--model", model, "--dataset", TOY, "--reward-mixer", MIXER, "--output-dir", out,
            "--batch-size", 2, "--group-size", 2, "--max-new-tokens", 4, "--learning-rate", 1e-2, "--eval-every", 0,
            "--threads", 1, "--no-progress", *extra]


def messages(result) -> list[str]:
    """The output's lines less transformers' progress bars (one a save)."""
    return [line for line in result.output.splitlines()
            if line.strip() and "Writing model shards" not in line and not line.startswith("log: ")]


def assert_error(result, *words) -> str:
    """Exit 1 with one line naming ``words``, no traceback; returns the line."""
    lines = messages(result)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len(lines) == 1 and all(w in lines[0] for w in words), result.output
    return lines[0]


def steps(log) -> list[dict]:
    return [r for r in read_log(log) if r["kind"] == "step"]


def weights(checkpoint: Path) -> dict:
    """Copies: load_file maps the file, and a test may truncate it next (SIGBUS)."""
    return {k: v.clone() for k, v in load_file(str(checkpoint / "model.safetensors")).items()}


def assert_same_weights(got: dict, want: dict) -> None:
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory, tiny_model_dir):
    """A finished qwen2 run of 4 steps with checkpoints at steps 2 and 4 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("four") / "run"
    result = invoke(cli, *train_args(tiny_model_dir("qwen2"), out, "--max-steps", 4, "--save-every", 2))
    assert result.exit_code == 0, result.output
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns(".lock"))
    return out


# -- 1. --resume with changed options -------------------------------------------------------------
@pytest.mark.parametrize("flag, value, accepted", [
    ("--learning-rate", "5e-3", True),
    ("--model", "gpt2", False),  # another architecture can never be the KL reference
    ("--batch-size", "3", True),
    ("--dataset", TINY, True),
])
def test_resume_refuses_changed_options_in_one_line(tmp_path, tiny_model_dir, four_steps, flag, value, accepted):
    out = copy_run(four_steps, tmp_path)
    model = str(tiny_model_dir("qwen2"))
    given = str(tiny_model_dir("gpt2")) if value == "gpt2" else value
    args = train_args(model, out, "--max-steps", 5, "--resume")
    i = args.index(flag)
    args[i + 1] = given
    assert_error(invoke(cli, *args), f"{flag} ")
    result = invoke(cli, *args, "--resume-with-changes")
    if not accepted:
        assert_error(result, "--model", "gpt2", "qwen2", "--resume-with-changes")
        assert steps(out / "train.jsonl")[-1]["step"] == 4
        return
    assert result.exit_code == 0, result.output
    last = steps(out / "train.jsonl")[-1]
    assert last["step"] == 5
    if flag == "--learning-rate":  # the new rate applies from the next step, not the checkpoint's
        assert last["rl"]["lr"] == 5e-3
    if flag == "--batch-size":
        assert len(last["generation"]) == 3 * 2
    if flag == "--dataset":
        runs = [r for r in read_log(out / "train.jsonl") if r["kind"] == "run"]
        assert runs[-1]["dataset"]["path"].endswith("addition_tiny.jsonl")


def test_resume_with_another_model_of_the_same_shape_makes_it_the_reference(tmp_path, tiny_model_dir, four_steps):
    out = copy_run(four_steps, tmp_path)
    other = tmp_path / "other-qwen2"
    init_model(other, TinyModelSpec(arch="qwen2", layers=1, hidden=32, heads=2, seed=7))
    result = invoke(cli, *train_args(other, out, "--max-steps", 5, "--resume", "--resume-with-changes"))
    assert result.exit_code == 0, result.output
    assert [r for r in read_log(out / "train.jsonl") if r["kind"] == "run"][-1]["config"]["model"] == str(other)


# -- 2. corrupt checkpoints -----------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff garbage \x13" * 8)


CORRUPTIONS = [
    ("trainer_state.json", lambda p: p.write_text("{}")),
    ("trainer_state.json", _truncate),
    ("trainer_state.json", lambda p: p.write_text(p.read_text().replace('"step": 4', '"step": 2'))),
    ("model.safetensors", _truncate),
    ("model.safetensors", _garbage),
    ("model.safetensors", Path.unlink),
    ("optimizer.safetensors", _truncate),
    ("optimizer.safetensors", _garbage),
    ("optimizer.json", _truncate),
    ("optimizer.json", lambda p: p.write_text(p.read_text().replace('"params": [0,', '"params": [77,'))),
    ("extra.safetensors", _truncate),
    ("tokenizer.json", _truncate),
    ("tokenizer_config.json", _garbage),
    ("config.json", Path.unlink),
]


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "older-checkpoint"])
@pytest.mark.parametrize("name, corrupt", CORRUPTIONS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CORRUPTIONS)])
def test_bad_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_model_dir, four_steps, name, corrupt,
                                                              manifest):
    out = copy_run(four_steps, tmp_path)
    if not manifest:  # written before checkpoints had one: the files' own structure is checked
        for path in out.glob("checkpoints/*/manifest.json"):
            path.unlink()
    want = weights(out / "checkpoints" / "step-000004")
    # killed between the last checkpoint and its end record: the resume redoes steps 3-4
    log = out / "train.jsonl"
    log.write_text("".join(line for line in log.read_text().splitlines(keepends=True) if '"kind": "end"' not in line))
    corrupt(out / "checkpoints" / "step-000004" / name)
    result = invoke(cli, *train_args(tiny_model_dir("qwen2"), out, "--max-steps", 4, "--save-every", 2, "--resume"))
    assert result.exit_code == 0, result.output
    [line] = messages(result)
    assert "step-000004" in line and name in line and "step-000002" in line and "Traceback" not in result.output
    assert (out / "checkpoints" / "corrupt-step-000004").is_dir()  # set aside, not deleted
    assert latest_checkpoint(out).name == "step-000004"
    assert_same_weights(weights(out / "checkpoints" / "step-000004"), want)  # the resume was exact
    records = read_log(log)
    assert [r["resumed_from_step"] for r in records if r["kind"] == "run"] == [None, 2]
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "completed"


@pytest.mark.parametrize("name, corrupt", [("trainer_state.json", lambda p: p.write_text("{}")),
                                           ("optimizer.safetensors", _truncate)])
def test_no_good_checkpoint_stops_naming_the_file(tmp_path, tiny_model_dir, four_steps, name, corrupt):
    out = copy_run(four_steps, tmp_path)
    for step in ("step-000002", "step-000004"):
        corrupt(out / "checkpoints" / step / name)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    result = invoke(cli, *train_args(tiny_model_dir("qwen2"), out, "--max-steps", 6, "--resume"))
    assert_error(result, "step-000004", name, "no earlier checkpoint")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing moved or overwritten


def test_checkpoint_files_and_directory_are_synced_before_the_rename(tmp_path, tiny_model_dir, monkeypatch):
    from rg_tracer.runtime import checkpoint

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                            real_fsync(fd))[1])
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    out = tmp_path / "run"
    assert invoke(cli, *train_args(tiny_model_dir("qwen2"), out, "--max-steps", 1)).exit_code == 0
    final = out / "checkpoints" / "step-000001"
    [rename] = [i for i, e in enumerate(events) if e[0] == "replace" and ".tmp-step-" in e[1]]
    tmp = os.path.realpath(events[rename][1])
    synced = {e[1] for e in events[:rename] if e[0] == "fsync"}
    assert {os.path.join(tmp, p.name) for p in final.iterdir()} | {tmp} <= synced
    assert ("fsync", os.path.realpath(out / "checkpoints")) in events[rename + 1:]  # the rename itself


def test_stale_temporary_checkpoints_are_removed_and_old_ones_rotated(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    model = tiny_model_dir("qwen2")
    assert invoke(cli, *train_args(model, out, "--max-steps", 4, "--save-every", 1, "--keep-checkpoints", 2)).exit_code == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000004"]
    stale = out / "checkpoints" / ".tmp-step-000005-12345"  # a save killed half-way
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    result = invoke(cli, *train_args(model, out, "--max-steps", 6, "--save-every", 1, "--keep-checkpoints", 2, "--resume"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000005", "step-000006"]


# -- 4. killed between the final checkpoint and the end record --------------------------------------------
def test_resume_of_a_run_killed_before_its_end_record_completes_it(tmp_path, tiny_model_dir, four_steps):
    out = copy_run(four_steps, tmp_path)
    log = out / "train.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert '"kind": "end"' in lines[-1]
    log.write_text("".join(lines[:-1]) + lines[-1][:20])  # the end record torn by the kill
    args = train_args(tiny_model_dir("qwen2"), out, "--max-steps", 4, "--resume")
    result = invoke(cli, *args)
    assert result.exit_code == 0, result.output
    records = read_log(log)
    assert (records[-1]["kind"], records[-1]["status"], records[-1]["step"]) == ("end", "completed", 4)
    assert len(steps(log)) == 4
    # a finished run resumes to nothing: exit 0, nothing written
    before = log.read_bytes()
    result = invoke(cli, *args)
    assert result.exit_code == 0 and "already completed" in result.output, result.output
    assert log.read_bytes() == before
