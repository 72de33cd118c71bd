"""The run directory: one process at a time (an exclusive lock the OS drops with its holder),
and ``--overwrite`` removes what the run owns without following a symlink."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rg_tracer.cli import cli
from rg_tracer.cli.eggroll import eggroll_command
from rg_tracer.runtime.checkpoint import latest_checkpoint
from tests.helpers import MIXER, REPO, TOY, invoke, read_log
from tests.test_checkpoints import assert_error, train_args


def test_overwrite_unlinks_a_symlinked_checkpoints_dir_and_leaves_its_target(tmp_path, tiny_model_dir):
    model, out, elsewhere = tiny_model_dir("qwen2"), tmp_path / "run", tmp_path / "big-disk"
    assert invoke(cli, *train_args(model, out, "--max-steps", 3)).exit_code == 0
    shutil.move(out / "checkpoints", elsewhere)  # the old run's checkpoints live elsewhere, behind a link
    (out / "checkpoints").symlink_to(elsewhere, target_is_directory=True)

    result = invoke(cli, *train_args(model, out, "--max-steps", 2, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert not (out / "checkpoints").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["step-000003"]  # the link's target is left alone
    assert latest_checkpoint(out).name == "step-000002"
    # a later --resume continues the new run, not the old one
    assert invoke(cli, *train_args(model, out, "--max-steps", 3, "--resume")).exit_code == 0
    runs = [r for r in read_log(out / "train.jsonl") if r["kind"] == "run"]
    assert [r["resumed_from_step"] for r in runs] == [None, 2]


def _steps(log: Path) -> int:
    return log.read_bytes().count(b'"kind": "step"') if log.exists() else 0


def test_a_second_process_on_a_run_directory_exits_naming_the_first(tmp_path, tiny_model_dir, monkeypatch):
    model, out = tiny_model_dir("qwen2"), tmp_path / "run"
    cmd = [sys.executable, "-c", "from rg_tracer.cli import main; main()",
           *map(str, train_args(model, out, "--max-steps", 10_000))]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while _steps(out / "train.jsonl") < 1 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None
        second = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
        assert [line for line in second.stderr.splitlines() if line.strip()] == [
            f"Error: {out} is in use by another process (PID {first.pid}); wait for it to end or stop it, "
            "or choose another --output-dir"]
        # eggroll shares the lock
        eggroll = ["--model", model, "--dataset", TOY, "--output-dir", out, "--reward-mixer", MIXER, "--population", 2,
                   "--prompts", 2, "--generations", 1, "--max-new-tokens", 3, "--threads", 1, "--no-progress",
                   "--overwrite"]
        assert_error(invoke(eggroll_command, *eggroll), f"PID {first.pid}")
        # under torchrun only rank 0 takes it
        from rg_tracer.runtime.run import claim_run_dir, release_run_dir

        monkeypatch.setenv("RANK", "1")
        claim_run_dir(out, ("checkpoints",), overwrite=True, resumable=True)
        release_run_dir(out)
        monkeypatch.delenv("RANK")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the OS dropped the killed process's lock
    result = invoke(cli, *train_args(model, out, "--max-steps", 2, "--resume"))
    assert result.exit_code == 0, result.output
