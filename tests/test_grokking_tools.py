"""Task generators and grokking diagnostics, against hand computations."""

import json

import pytest
import torch
from click.testing import CliRunner

from rg_tracer.cli import cli
from rg_tracer.dapo.diagnostics import SlowGradient, weight_norms
from rg_tracer.errors import UserError
from rg_tracer.models import load_model
from rg_tracer.tasks import make_split
from rg_tracer.dapo.trainer import train
from tests.helpers import config, read_log


@pytest.mark.parametrize("task, params, total", [
    ("modular", {"p": 7, "op": "+"}, 49), ("modular", {"p": 7, "op": "/"}, 42),
    ("addition", {"digits": 2, "count": 100}, 100), ("parity", {"n": 6, "k": 2, "count": 40}, 40),
])
def test_splits_are_disjoint_complete_and_seeded(task, params, total):
    split = make_split(task, train_frac=0.3, seed=1, **params)
    prompts_train, prompts_test = {r["prompt"] for r in split.train}, {r["prompt"] for r in split.test}
    assert not prompts_train & prompts_test
    assert len(split.train) + len(split.test) == total == len(prompts_train | prompts_test)
    assert len(split.train) == round(0.3 * total)
    again = make_split(task, train_frac=0.3, seed=1, **params)
    assert again.train == split.train
    assert make_split(task, train_frac=0.3, seed=2, **params).train != split.train


def test_modular_answers_hand_checked():
    rows = {r["prompt"]: r["answer"] for r in make_split("modular", p=7, op="/", train_frac=0.5).train +
            make_split("modular", p=7, op="/", train_frac=0.5).test}
    assert rows["3/5="] == "2"  # 5 * 2 = 10 = 3 mod 7
    assert rows["0/1="] == "0"
    sub = make_split("modular", p=5, op="-", train_frac=0.5)
    assert {r["prompt"]: r["answer"] for r in sub.train + sub.test}["1-3="] == "3"


@pytest.mark.parametrize("task, params, message", [
    ("modular", {"p": 9, "op": "/"}, "not prime"),
    ("modular", {"p": 7, "op": "^"}, "choose one of"),
    ("addition", {"digits": 1, "count": 101}, "exceeds the 100"),
    ("parity", {"n": 3, "k": 4, "count": 2}, "--k 4 must be in"),
    ("sudoku", {}, "unknown task"),
])
def test_generator_errors(task, params, message):
    with pytest.raises(UserError, match=message):
        make_split(task, **params)


def test_data_command_writes_files_and_refuses_overwrite(tmp_path):
    out = tmp_path / "mod5"
    result = CliRunner().invoke(cli, ["data", "modular", "--p", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "12 train / 13 test" in result.output
    info = json.loads((out / "dataset.json").read_text())
    assert info["task"] == "modular" and info["train"] == 12
    again = CliRunner().invoke(cli, ["data", "modular", "--p", "5", "--out", str(out)])
    assert again.exit_code == 1 and "already holds a dataset" in again.output
    bad = CliRunner().invoke(cli, ["data", "modular", "--train-frac", "0", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "must be in (0, 1)" in bad.output


def test_weight_norms_hand_computed(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir("gpt2")))
    norms = weight_norms(model)
    total = sum(float(p.detach().pow(2).sum()) for p in model.parameters()) ** 0.5
    assert norms["diag/weight_norm"] == pytest.approx(total, rel=1e-6)
    block0 = sum(float(p.detach().pow(2).sum()) for n, p in model.named_parameters() if ".h.0." in f".{n}") ** 0.5
    assert norms["diag/weight_norm/block_0"] == pytest.approx(block0, rel=1e-6)


def test_slow_gradient_ema_ratio_and_amplification():
    p = torch.nn.Parameter(torch.zeros(2))
    slow = SlowGradient(alpha=0.5, lam=2.0)
    p.grad = torch.tensor([2.0, 0.0])
    slow([p])  # ema = g1 = [2, 0]; g <- g + 2 * ema = [6, 0]
    assert p.grad.tolist() == [6.0, 0.0] and slow.last_ratio == pytest.approx(1.0)
    p.grad = torch.tensor([0.0, 2.0])
    slow([p])  # ema = 0.5 * [2, 0] + 0.5 * [0, 2] = [1, 1]; ratio = sqrt(2) / 2
    assert slow.ema[0].tolist() == [1.0, 1.0]
    assert slow.last_ratio == pytest.approx(2**0.5 / 2)
    assert p.grad.tolist() == [2.0, 4.0]


def test_diagnostics_are_logged_and_grokfast_resumes_exactly(tmp_path, tiny_model_dir):
    model = tiny_model_dir("qwen2")
    whole = train(config(tmp_path / "a", model, max_steps=4, diag_every=2, grokfast_lambda=2.0, eval_every=0))
    steps = [r for r in read_log(whole.run.log_path) if r["kind"] == "step"]
    assert "diag/weight_norm" not in steps[0]["rl"] and steps[1]["rl"]["diag/weight_norm"] > 0
    assert steps[1]["rl"]["diag/slow_fast_grad_ratio"] > 0
    train(config(tmp_path / "b", model, max_steps=2, diag_every=2, grokfast_lambda=2.0, eval_every=0))
    resumed = train(config(tmp_path / "b", model, max_steps=4, diag_every=2, grokfast_lambda=2.0,
                           eval_every=0, resume=True))
    for name, tensor in whole.run.model.state_dict().items():
        torch.testing.assert_close(resumed.run.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


def test_supervised_warmup_then_rl_in_one_log(tmp_path, tiny_model_dir):
    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), sft_steps=6, sft_batch_size=8, max_steps=7,
                           learning_rate=3e-3, eval_every=0))
    steps = [r for r in read_log(trainer.run.log_path) if r["kind"] == "step"]
    assert [s["phase"] for s in steps] == ["sft"] * 6 + ["rl"]
    sft = steps[:6]
    assert all(s["gepa"] == [] and s["rl"]["policy_loss"] is None and s["rl"]["sft/examples"] == 8 for s in sft)
    assert sft[-1]["rl"]["loss"] < sft[0]["rl"]["loss"]
    assert len(steps[6]["gepa"]) == 4
