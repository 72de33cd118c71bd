"""SIGKILL a real training run at several points, resume, and compare with an unbroken run."""

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rg_tracer.runtime.log_writer import drop_torn_tail
from rg_tracer.schema import supersede, validate
from tests.helpers import MIXER, REPO, TOY

STEPS = 12


def command(model, out, *extra):
    return [sys.executable, "-c", "from rg_tracer.cli import main; main()", "train", "--model", str(model),
            "--dataset", TOY, "--reward-mixer", MIXER, "--output-dir", str(out), "--batch-size", "2",
            "--group-size", "2", "--max-new-tokens", "4", "--learning-rate", "1e-2", "--max-steps", str(STEPS),
            "--save-every", "3", "--eval-every", "4", "--eval-samples", "4", "--threads", "1", "--no-progress",
            *extra]


def step_lines(log):
    if not log.exists():
        return 0
    return sum(1 for line in log.read_bytes().splitlines() if b'"kind": "step"' in line)


def run_until_killed(cmd, log, after_steps, timeout=120):
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while step_lines(log) < after_steps and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def final_weights(run):
    return load_file(str(run / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("unbroken") / "run"
    subprocess.run(command(tiny_model_dir("qwen2"), out), cwd=REPO, check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.parametrize("kill_points", [(2,), (7, 10), (3, 6, 9)])
def test_sigkill_and_resume_matches_unbroken_run(tmp_path, tiny_model_dir, unbroken, kill_points):
    model, out = tiny_model_dir("qwen2"), tmp_path / "run"
    log = out / "train.jsonl"
    first = True
    for point in kill_points:
        run_until_killed(command(model, out, *([] if first else ["--resume"])), log, point)
        first = False
    done = subprocess.run(command(model, out, "--resume"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    records = supersede([validate(json.loads(line)) for line in log.read_text().splitlines()])
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, STEPS + 1))
    assert [(r["step"], r["split"]) for r in records if r["kind"] == "eval"] == [
        (s, split) for s in (0, 4, 8, 12) for split in ("test", "train")]
    want, got = final_weights(unbroken), final_weights(out)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_sigint_stops_after_the_step_and_says_how_to_resume(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    proc = subprocess.Popen(command(tiny_model_dir("qwen2"), out), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while step_lines(out / "train.jsonl") < 2 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # 128 + SIGINT: stopped by Ctrl-C (rg_tracer.cli.common.EXIT_INTERRUPTED)
    assert "--resume" in err and "Traceback" not in err
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    last_step = max(r["step"] for r in records if r["kind"] == "step")
    assert records[-1] == {**records[-1], "kind": "end", "status": "interrupted", "step": last_step}
    assert (out / "checkpoints" / f"step-{last_step:06d}" / "trainer_state.json").is_file()


def test_torn_tail_is_cut_before_appending(tmp_path):
    log = tmp_path / "train.jsonl"
    log.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3')
    assert drop_torn_tail(log) == len(b'{"c": 3')
    assert log.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert drop_torn_tail(log) == 0
    log.write_bytes(b"no newline at all")
    assert drop_torn_tail(log) == len(b"no newline at all") and log.read_bytes() == b""


# -- non-finite steps ------------------------------------------------------------------------------------
def in_process(model, out, *extra):
    """``command``'s run in this process (monkeypatches reach it)."""
    from rg_tracer.cli import cli
    from tests.helpers import invoke

    return invoke(cli, *command(model, out, *extra)[3:])


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip() and "Writing model shards" not in line]
    assert result.exit_code == 1 and "Traceback" not in result.output and len(lines) == 1, result.output
    return lines[0]


def complete_lines(log) -> list[dict]:
    """Every line of the log, which must end in a newline, validated."""
    text = log.read_text()
    assert text.endswith("\n")
    return [validate(json.loads(line)) for line in text.splitlines()]


def resume_matches(model, out, unbroken):
    """``--resume`` finishes the run with the unbroken run's final weights."""
    done = in_process(model, out, "--resume")
    assert done.exit_code == 0, done.output
    want, got = final_weights(unbroken), final_weights(out)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def poison_step(monkeypatch, step):
    """Make the loss (and so every gradient) NaN at RL step ``step`` (one update per step here)."""
    from rg_tracer.dapo import trainer

    real, calls = trainer.loss_correction, []

    def poisoned(logp, *args, **kwargs):
        calls.append(1)
        extra = real(logp, *args, **kwargs)
        return logp.sum() * float("nan") if len(calls) == step else extra

    monkeypatch.setattr(trainer, "loss_correction", poisoned)


def blow_up_after(monkeypatch, step):
    """Scale every weight by 1e30 after optimizer step ``step`` (as a huge learning rate would):
    finite weights whose forward overflows."""
    from rg_tracer.dapo.optim import ClippingOptimizer

    real, calls = ClippingOptimizer.step, []

    def step_then_blow_up(self):
        real(self)
        calls.append(1)
        if len(calls) == step:
            for group in self.param_groups:
                for p in group["params"]:
                    p.data.mul_(1e30)

    monkeypatch.setattr(ClippingOptimizer, "step", step_then_blow_up)


@pytest.mark.parametrize("case, extra, words", [
    ("nan-gradient", (), ["step 1:", "non-finite gradient norm", "--skip-nonfinite"]),  # nothing trained: no checkpoint
    ("diverged", (), ["step 2:", "not finite", "diverged"]),  # the weights after step 1 are not saved
    ("diverged", ("--skip-nonfinite",), ["step 2:", "not finite", "cannot be skipped"]),
])
def test_non_finite_step_stops_with_one_line(tmp_path, tiny_model_dir, monkeypatch, case, extra, words):
    out = tmp_path / "run"
    if case == "nan-gradient":
        poison_step(monkeypatch, 1)
    else:
        blow_up_after(monkeypatch, 1)
    line = one_error_line(in_process(tiny_model_dir("qwen2"), out, *extra))
    assert all(w in line for w in words), line
    assert not list((out / "checkpoints").glob("step-*"))
    records = complete_lines(out / "train.jsonl")
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "interrupted"
    assert all(r["rl"]["grad_norm"] is not None for r in records if r["kind"] == "step")


def test_non_finite_step_saves_the_last_good_step_and_resumes_exactly(tmp_path, tiny_model_dir, unbroken, monkeypatch):
    model, out = tiny_model_dir("qwen2"), tmp_path / "run"
    poison_step(monkeypatch, 5)
    line = one_error_line(in_process(model, out))
    assert "step 5:" in line and "step-000004" in line, line
    assert (out / "checkpoints" / "step-000004").is_dir() and not (out / "checkpoints" / "step-000005").exists()
    assert complete_lines(out / "train.jsonl")[-1] == {**complete_lines(out / "train.jsonl")[-1], "kind": "end",
                                                       "step": 4}
    monkeypatch.undo()
    resume_matches(model, out, unbroken)


def test_skip_nonfinite_skips_the_update_and_logs_null(tmp_path, tiny_model_dir, monkeypatch):
    model, out = tiny_model_dir("qwen2"), tmp_path / "run"
    poison_step(monkeypatch, 3)
    done = in_process(model, out, "--skip-nonfinite", "--save-every", "1", "--max-steps", "4")
    assert done.exit_code == 0, done.output
    records = complete_lines(out / "train.jsonl")
    third = [r for r in records if r["kind"] == "step" and r["step"] == 3][-1]
    assert third["rl"]["loss"] is None and third["rl"]["grad_norm"] is None and third["rl"]["nonfinite_skipped"] == 1
    ckpt = out / "checkpoints"
    for name in ("model.safetensors", "optimizer.safetensors"):  # no update at step 3
        two, three = load_file(str(ckpt / "step-000002" / name)), load_file(str(ckpt / "step-000003" / name))
        assert all(torch.equal(two[k], three[k]) for k in two)
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "completed" and records[-1]["step"] == 4


# -- a full disk ------------------------------------------------------------------------------------------
def disk_full(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_full_disk_during_a_checkpoint_stops_cleanly_and_resumes_exactly(tmp_path, tiny_model_dir, unbroken, monkeypatch):
    from rg_tracer.runtime import checkpoint

    model, out = tiny_model_dir("qwen2"), tmp_path / "run"
    real = checkpoint.save_file

    def full_at_step_6(tensors, path, *args, **kwargs):
        if "step-000006" in str(path):
            Path(path).write_bytes(b"half a file")
            raise disk_full(path)
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_at_step_6)
    line = one_error_line(in_process(model, out))
    assert line.endswith("No space left on device; free space and rerun with --resume"), line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003"]  # no half checkpoint
    complete_lines(out / "train.jsonl")
    monkeypatch.undo()
    resume_matches(model, out, unbroken)


def test_full_disk_during_a_log_write_leaves_complete_lines_and_resumes_exactly(tmp_path, tiny_model_dir, unbroken,
                                                                                monkeypatch):
    from rg_tracer.runtime.log_writer import JsonlLogger

    model, out = tiny_model_dir("qwen2"), tmp_path / "run"
    real = JsonlLogger.write

    def full_at_step_8(self, kind, **fields):
        if kind == "step" and fields["step"] == 8:
            self._file.write('{"schema": "rg-tracer/2", "kind": "step", "step": 8, "rl": {"lo')
            self._file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name
        return real(self, kind, **fields)

    monkeypatch.setattr(JsonlLogger, "write", full_at_step_8)
    line = one_error_line(in_process(model, out))
    assert line.endswith(f"{out}: No space left on device; free space and rerun with --resume"), line
    assert max(r["step"] for r in complete_lines(out / "train.jsonl") if r["kind"] == "step") == 7
    monkeypatch.undo()
    resume_matches(model, out, unbroken)
