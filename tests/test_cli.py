"""The command line as a user meets it: help, one-line errors, exit codes."""

import subprocess
import sys

import pytest

from rg_tracer.cli import cli
from tests.helpers import MIXER, REPO, TOY, invoke


def test_every_command_has_help_with_an_example():
    for name, command in cli.commands.items():
        result = invoke(cli, name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"{name} --help has no Example block"


def test_train_help_lists_the_seed_flags():
    out = invoke(cli, "train", "--help").output
    for flag in ("--model", "--dataset", "--output-dir", "--batch-size", "--group-size", "--learning-rate",
                 "--clip-ratio", "--kl-target", "--kl-coef", "--reward-mixer", "--eval-every", "--seed",
                 "--max-steps", "--resume", "--overwrite", "--scorer", "--config"):
        assert flag in out


def test_init_model_then_train_then_refuse_rerun(tmp_path):
    model = tmp_path / "model"
    result = invoke(cli, "init-model", str(model), "--arch", "llama", "--layers", "1", "--hidden", "16", "--heads", "2")
    assert result.exit_code == 0 and "parameters" in result.output
    args = ["train", "--model", str(model), "--dataset", TOY, "--output-dir", str(tmp_path / "run"),
            "--reward-mixer", MIXER, "--max-steps", "1", "--eval-every", "1", "--eval-samples", "3", "--no-progress",
            "--threads", "1"]
    result = invoke(cli, *args)
    assert result.exit_code == 0, result.output
    assert "train.jsonl" in result.output
    assert "eval at step 1: test (n=3) correctness" in result.output and "; train (n=3)" in result.output
    again = invoke(cli, *args)
    assert again.exit_code == 1
    assert "already holds a run; pass --resume" in again.output
    assert "Traceback" not in again.output


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt2"], "could not be fetched from the Hugging Face Hub"),
    (["--model", "{model}", "--group-size", "1"], "--group-size 1 must be >= 2"),
    (["--model", "{model}", "--reward-mixer", "nope.yaml"], "--reward-mixer nope.yaml: no such file"),
    (["--model", "{model}", "--dataset", "{bad}"], "bad.jsonl:2: not valid JSON"),
    (["--dataset", TOY], "--model is required"),
])
def test_train_user_errors_are_one_line(tmp_path, tiny_model_dir, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{not json\n')
    args = [a.format(model=tiny_model_dir("qwen2"), bad=bad) for a in args]
    if "--dataset" not in args:
        args += ["--dataset", TOY]
    result = invoke(cli, "train", *args, "--output-dir", str(tmp_path / "run"), "--no-progress")
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_init_model_rejects_bad_shapes(tmp_path):
    result = invoke(cli, "init-model", str(tmp_path / "m"), "--hidden", "30", "--heads", "4")
    assert result.exit_code == 1 and "must be divisible" in result.output
    result = invoke(cli, "init-model", str(tmp_path / "m"), "--arch", "mamba")
    assert result.exit_code == 2 and "mamba" in result.output


def test_config_file_with_overrides(tmp_path, tiny_model_dir):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"dataset: {TOY}\nreward_mixer: {MIXER}\nmax_steps: 1\neval_every: 0\nbatch_size: 1\n")
    result = invoke(cli, "train", "--config", str(cfg), "--model", str(tiny_model_dir("qwen2")),
                    "--output-dir", str(tmp_path / "run"), "--no-progress")
    assert result.exit_code == 0, result.output
    cfg.write_text("max_stepz: 1\n")
    result = invoke(cli, "train", "--config", str(cfg), "--model", "x")
    assert result.exit_code == 1 and "unknown option 'max_stepz'" in result.output


def test_seed_script_runs_with_the_seed_flags(tmp_path, tiny_model_dir):
    cmd = [sys.executable, "scripts/train_dapo_hybrid.py", "--model", str(tiny_model_dir("gpt2")),
           "--dataset", "datasets/toy_math/addition_small.jsonl", "--output-dir", str(tmp_path / "dapo_hybrid"),
           "--batch-size", "4", "--group-size", "2", "--learning-rate", "1e-5", "--clip-ratio", "0.2",
           "--kl-target", "0.1", "--kl-coef", "0.1", "--reward-mixer", "configs/reward_mixer.yaml",
           "--eval-every", "100", "--seed", "42", "--max-steps", "2", "--threads", "1", "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dapo_hybrid" / "train.jsonl").is_file()


def test_minimal_example_writes_a_valid_log(tmp_path):
    import json

    from rg_tracer.schema import validate

    log = tmp_path / "minimal.jsonl"
    done = subprocess.run([sys.executable, "examples/dapo_hybrid_minimal.py", str(log)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    assert [validate(json.loads(line))["step"] for line in lines] == [1, 2, 3, 4, 5]
