"""torchrun with 2 gloo processes: one run per launch, ranks identical, 2 ranks = 1 process.

Each test launches ``torchrun --standalone`` (a free rendezvous port of its own, so it runs
beside pytest-xdist) on the tiny Qwen2 for a few steps.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import MIXER, REPO, TOY, read_log

pytestmark = pytest.mark.distributed
BIN = Path(sys.executable).parent
DRIVER = Path(__file__).parent / "driver.py"
TIMEOUT = 240


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch(tmp_path, name, search, nproc=2, **config):
    """Run ``search`` ("train"/"eggroll") with ``config`` in ``nproc`` processes; return (log, weights per rank)."""
    out = tmp_path / name
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps({"search": search, "config": {**config, "output_dir": str(out)},
                                "weights_dir": str(tmp_path / f"{name}-weights")}))
    command = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", str(DRIVER), str(spec)]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = [load_file(str(tmp_path / f"{name}-weights" / f"rank{r}.safetensors")) for r in range(nproc)]
    return read_log(out / "train.jsonl"), weights


def train_config(model, **overrides):
    return {"model": str(model), "dataset": TOY, "reward_mixer": MIXER, "batch_size": 4, "group_size": 2,
            "max_new_tokens": 3, "max_steps": 4, "sft_steps": 1, "eval_every": 2, "eval_samples": 5,
            "learning_rate": 1e-2, "kl_coef": 0.1, "kl_target": 0.01, "threads": 1, "progress": False,
            **overrides}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def steps(log):
    return [r for r in log if r["kind"] == "step"]


def test_one_run_per_launch_and_ranks_stay_identical(tmp_path, tiny_model_dir):
    log, (w0, w1) = launch(tmp_path, "two", "train", **train_config(tiny_model_dir("qwen2"), dynamic_sampling=True,
                                                                     updates_per_batch=2))
    kinds = [r["kind"] for r in log]
    assert kinds.count("run") == 1 and kinds.count("end") == 1 and log[-1]["status"] == "completed"
    assert [r["step"] for r in steps(log)] == [1, 2, 3, 4]
    assert log[0]["distributed"] == {"world_size": 2, "backend": "gloo"}
    for record in steps(log)[1:]:  # the whole global batch, in global prompt order
        assert len(record["gepa"]) == 4 * 2 and record["rl"]["dist/grad_norm_spread"] == 0.0
        assert record["safety"]["count"] % 8 == 0
    assert max_difference(w0, w1) == 0.0  # bit-identical ranks


def test_two_processes_equal_one_with_seed_per_prompt(tmp_path, tiny_model_dir):
    config = train_config(tiny_model_dir("qwen2"), seed_per_prompt=True, entropy_coef=0.05)
    two, (w2, _) = launch(tmp_path, "two", "train", **config)
    one, (w1,) = launch(tmp_path, "one", "train", nproc=1, **config)
    for a, b in zip(steps(one), steps(two), strict=True):
        assert [g["completion"] for g in a["generation"]] == [g["completion"] for g in b["generation"]]
        assert [g["prompt_id"] for g in a["generation"]] == [g["prompt_id"] for g in b["generation"]]
        assert b["rl"]["loss"] == pytest.approx(a["rl"]["loss"], rel=1e-5, abs=1e-6)
        if a["phase"] == "rl":
            assert b["rl"]["kl_coeff"] == pytest.approx(a["rl"]["kl_coeff"], rel=1e-6)
            assert b["rl"]["reward_mixed_mean"] == pytest.approx(a["rl"]["reward_mixed_mean"], abs=1e-6)
            assert b["safety"]["count"] == a["safety"]["count"]
            assert b["safety"]["reward_ema"] == pytest.approx(a["safety"]["reward_ema"], abs=1e-6)
    assert max_difference(w1, w2) < 1e-5
    evals = lambda log: [(r["step"], r["split"], r["n"]) for r in log if r["kind"] == "eval"]  # noqa: E731
    assert evals(one) == evals(two)


def test_two_processes_with_micro_batches_equal_one_without(tmp_path, tiny_model_dir):
    """DDP + --micro-batch-size: each rank accumulates its 4 rows in chunks of 2 (all-reduce on the
    last chunk only); the update is one process's whole-batch update."""
    config = train_config(tiny_model_dir("qwen2"), seed_per_prompt=True, entropy_coef=0.05, clip_ratio_high=0.28,
                          updates_per_batch=2, eval_every=0, learning_rate=1e-3)
    two, (w2, w2b) = launch(tmp_path, "two", "train", micro_batch_size=2, **config)
    one, (w1,) = launch(tmp_path, "one", "train", nproc=1, **config)
    for a, b in zip(steps(one), steps(two), strict=True):
        assert [g["completion"] for g in a["generation"]] == [g["completion"] for g in b["generation"]]
        for key in ("loss", "kl", "entropy", "grad_norm"):
            if a["rl"].get(key) is not None:  # the warm-up step has no KL
                assert b["rl"][key] == pytest.approx(a["rl"][key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert max_difference(w2, w2b) == 0.0 and max_difference(w1, w2) < 1e-6


def test_resumed_two_rank_run_equals_an_unbroken_one(tmp_path, tiny_model_dir):
    model = tiny_model_dir("qwen2")
    _, (unbroken, _) = launch(tmp_path, "unbroken", "train", **train_config(model))
    launch(tmp_path, "broken", "train", **train_config(model, max_steps=2))
    assert not list((tmp_path / "broken" / "checkpoints").glob(".tmp-*"))
    log, (resumed, other) = launch(tmp_path, "broken", "train", **train_config(model, resume=True))
    assert max_difference(unbroken, resumed) == 0.0 and max_difference(resumed, other) == 0.0
    assert [r["resumed_from_step"] for r in log if r["kind"] == "run"] == [None, 2]


def test_eggroll_across_two_processes_is_bit_identical_to_one(tmp_path, tiny_model_dir):
    config = {"model": str(tiny_model_dir("qwen2")), "dataset": TOY, "reward_mixer": MIXER, "population": 8,
              "prompts": 2, "generations": 3, "member_batch": 4, "max_new_tokens": 3, "eval_every": 2,
              "eval_samples": 4, "threads": 1, "progress": False}
    two, (a, b) = launch(tmp_path, "two", "eggroll", **config)
    one, (c,) = launch(tmp_path, "one", "eggroll", nproc=1, **config)
    assert max_difference(a, b) == 0.0 and max_difference(a, c) == 0.0
    assert [s["es"]["member_fitness"] for s in steps(two)] == [s["es"]["member_fitness"] for s in steps(one)]
    assert [r["kind"] for r in two].count("run") == 1


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "3"], "--batch-size 3 does not divide among 2 processes"),
    (["--batch-size", "4", "--group-size", "2", "--micro-batch-size", "8"],
     "--micro-batch-size 8 does not divide the 4 completions each of 2 processes holds"),
])
def test_bad_splits_are_refused_before_anything_is_written(tmp_path, tiny_model_dir, extra, message):
    out = tmp_path / "run"
    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "--no-python", str(BIN / "rg-tracer"),
               "train", "--model", str(tiny_model_dir("qwen2")), "--dataset", TOY, "--reward-mixer", MIXER,
               "--output-dir", str(out), "--max-steps", "2", "--threads", "1", "--no-progress", *extra]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode != 0 and f"Error: {message}" in done.stderr
    assert "rg_tracer/" not in done.stderr  # a one-line error from each rank; torchrun adds its own report
    assert not out.exists()


def test_eggroll_population_must_split_in_pairs(tmp_path, tiny_model_dir):
    out = tmp_path / "es"
    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "--no-python", str(BIN / "rg-tracer"),
               "eggroll", "--model", str(tiny_model_dir("qwen2")), "--dataset", TOY, "--reward-mixer", MIXER,
               "--output-dir", str(out), "--population", "6", "--generations", "1", "--threads", "1", "--no-progress"]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode != 0 and "--population 6 does not split among 2 processes" in done.stderr
    assert not out.exists()


def test_upstream_advantages_follow_the_log_probs_device():
    """The CUDA shim, checked on CPU: advantages built on CPU meet log-probs on another device."""
    from gepa_dapo_grn import DAPOConfig

    from rg_tracer.dapo import upstream

    trainer = upstream._DeviceSafeTrainer.__new__(upstream._DeviceSafeTrainer)
    trainer.config = DAPOConfig(clip_ratio=0.2, clip_advantage=5.0)
    logp = torch.zeros(4, device="meta")
    loss = trainer._compute_policy_loss(logp, logp, torch.ones(4))
    assert loss.device.type == "meta"
    with pytest.raises(RuntimeError):  # upstream's own loss: the device mismatch the shim removes
        upstream.DAPOTrainer._compute_policy_loss(trainer, logp, logp, torch.ones(4))


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tmp_path, tiny_model_dir):
    import signal
    import time

    out = tmp_path / "run"
    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "--no-python", str(BIN / "rg-tracer"),
               "train", "--model", str(tiny_model_dir("qwen2")), "--dataset", TOY, "--reward-mixer", MIXER,
               "--output-dir", str(out), "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "3",
               "--max-steps", "100000", "--eval-every", "0", "--threads", "1", "--no-progress"]
    launcher = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train.jsonl"
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and (not log.exists() or log.read_text().count('"kind": "step"') < 3):
        time.sleep(0.2)
    agent = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    ranks = [int(p) for p in agent]
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGINT)  # one rank only: the other learns of it in the step's all-reduce
    _, stderr = launcher.communicate(timeout=TIMEOUT)
    assert launcher.returncode != 0 and "exitcode  : 130" in stderr, stderr[-2000:]  # interrupted: 130 (docs)
    records = read_log(log)
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "interrupted"
    last = records[-1]["step"]
    assert [c.name for c in (out / "checkpoints").iterdir()] == [f"step-{last:06d}"]
    assert [r["step"] for r in steps(records)] == list(range(1, last + 1))


def test_two_processes_equal_one_with_onednn_linears(tmp_path, monkeypatch):
    """DDP over ``--cpu-gemm onednn``'s autograd function: a model wide enough (hidden 256) that
    its MLP products go to oneDNN (the one-process run here counts the calls); two ranks'
    update equals one process's."""
    from rg_tracer.dapo.config import TrainConfig
    from rg_tracer.dapo.trainer import train
    from rg_tracer.models import TinyModelSpec, init_model
    from rg_tracer.runtime import cpu_gemm

    if not cpu_gemm.onednn_linear_works():
        pytest.skip("this torch build has no oneDNN float32 linear")
    model = tmp_path / "wide"
    init_model(model, TinyModelSpec(arch="qwen2", layers=1, hidden=256, heads=4, seed=1))
    config = train_config(model, seed_per_prompt=True, cpu_gemm="onednn", eval_every=0, max_steps=2,
                          learning_rate=1e-3, batch_size=8)
    two, (w2, w2b) = launch(tmp_path, "two", "train", **config)
    calls = []
    apply = cpu_gemm._Linear.apply
    monkeypatch.setattr(cpu_gemm._Linear, "apply", lambda *args: calls.append(1) or apply(*args))
    alone = train(TrainConfig(**config, output_dir=str(tmp_path / "one")))  # one process, this one
    assert calls  # the gradient forwards went through oneDNN
    one = read_log(alone.run.log_path)
    w1 = {k: v.detach() for k, v in alone.run.model.state_dict().items()}
    assert two[0]["model"]["cpu_gemm"] == one[0]["model"]["cpu_gemm"] == "onednn"
    for a, b in zip(steps(one), steps(two), strict=True):
        assert [g["completion"] for g in a["generation"]] == [g["completion"] for g in b["generation"]]
        assert b["rl"]["loss"] == pytest.approx(a["rl"]["loss"], rel=1e-5, abs=1e-6)
    assert max_difference(w2, w2b) == 0.0 and max_difference(w1, w2) < 1e-5
