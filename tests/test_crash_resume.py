"""SIGKILL a real training run at several points, resume, and compare with an unbroken run."""

import json
import signal
import subprocess
import sys
import time

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
    assert proc.returncode == 0, err
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
