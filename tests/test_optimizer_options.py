"""The grokking knobs: --adam-betas, --weight-decay-exclude, --no-sft-eos-loss, --max-grad-norm 0.

Each is checked where it acts (AdamW's parameter groups, the supervised loss, the clip),
not only where it parses.
"""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from rg_tracer.cli import cli
from rg_tracer.dapo.trainer import DAPOHybridTrainer, train
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.dapo.optim import ClippingOptimizer, adamw, parameter_groups
from rg_tracer.dapo.setup import prepare_run
from rg_tracer.errors import UserError
from rg_tracer.models import TinyModelSpec, init_model, load_model
from tests.helpers import config, read_log


# -- parsing and validation ---------------------------------------------------------------
def test_new_options_parse_and_normalise(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir("qwen2"), adam_betas="0.9, 0.98", weight_decay_exclude="embeddings, norms",
                 sft_eos_loss=False, max_grad_norm=0.0)
    assert cfg.betas == (0.9, 0.98) and cfg.adam_betas == "0.9,0.98"
    assert cfg.no_decay == ("norms", "embeddings") and cfg.weight_decay_exclude == "norms,embeddings"
    assert not cfg.clips_gradients and not cfg.sft_eos_loss
    # YAML lists work too; inf means no clipping; the defaults are today's behaviour
    assert config(tmp_path, tiny_model_dir("qwen2"), adam_betas=[0.8, 0.99]).betas == (0.8, 0.99)
    assert not config(tmp_path, tiny_model_dir("qwen2"), max_grad_norm=math.inf).clips_gradients
    default = config(tmp_path, tiny_model_dir("qwen2"))
    assert default.betas == (0.9, 0.999) and default.no_decay == () and default.sft_eos_loss and default.clips_gradients


@pytest.mark.parametrize("overrides, flag, fix", [
    ({"adam_betas": "0.9"}, "--adam-betas", "e.g. --adam-betas 0.9,0.98"),
    ({"adam_betas": "0.9,1.0"}, "--adam-betas", "e.g. --adam-betas 0.9,0.98"),
    ({"adam_betas": "a,b"}, "--adam-betas", "e.g. --adam-betas 0.9,0.98"),
    ({"weight_decay_exclude": "norms,layers"}, "--weight-decay-exclude", "e.g. --weight-decay-exclude norms,embeddings"),
    ({"max_grad_norm": -1.0}, "--max-grad-norm", "0 or inf: no clipping"),
    ({"max_grad_norm": math.nan}, "--max-grad-norm", "0 or inf: no clipping"),
])
def test_bad_values_say_option_rule_and_fix(tmp_path, tiny_model_dir, overrides, flag, fix):
    with pytest.raises(UserError) as err:
        config(tmp_path, tiny_model_dir("qwen2"), **overrides)
    message = str(err.value)
    assert flag in message and fix in message and "\n" not in message


def test_cli_bad_betas_is_one_line_error_and_help_lists_options(tmp_path, tiny_model_dir):
    runner = CliRunner()
    help_text = runner.invoke(cli, ["train", "--help"]).output
    for flag in ("--adam-betas", "--weight-decay-exclude", "--no-sft-eos-loss", "no clipping"):
        assert flag in help_text
    result = runner.invoke(cli, ["train", "--model", str(tiny_model_dir("qwen2")), "--dataset", "x.jsonl",
                                 "--adam-betas", "0.9;0.98", "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--adam-betas" in lines[0] and "0.9,0.98" in lines[0]


# -- AdamW: betas and the no-decay group -----------------------------------------------------
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_adamw_groups_hold_betas_and_no_decay_parameters(tiny_model_dir, arch):
    model, _ = load_model(str(tiny_model_dir(arch)))
    names = {id(p): n for n, p in model.named_parameters()}
    opt = adamw(model, 1e-3, 0.5, (0.9, 0.98), ("biases", "norms", "embeddings"))
    decay, no_decay = opt.param_groups
    assert decay["betas"] == no_decay["betas"] == (0.9, 0.98)
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    off = {names[id(p)] for p in no_decay["params"]}
    on = {names[id(p)] for p in decay["params"]}
    assert not off & on and len(off | on) == len(names)  # every parameter once
    embedding = model.get_input_embeddings().weight
    assert names[id(embedding)] in off  # tied with the output layer: one tensor, not decayed
    assert any("norm" in n or ".ln_" in n for n in off) and any(n.endswith(".bias") for n in off)
    assert all(not n.endswith(".bias") and "norm" not in n for n in on) and len(on) > 0

    only_norms = {names[id(p)] for p in parameter_groups(model, 0.5, ("norms",))[1]["params"]}
    assert only_norms and names[id(embedding)] not in only_norms and all(not n.endswith(".bias") or "ln" in n
                                                                         for n in only_norms)
    single = adamw(model, 1e-3, 0.5)  # default: one group, everything decayed, torch's betas
    assert len(single.param_groups) == 1 and single.param_groups[0]["betas"] == (0.9, 0.999)


def test_no_decay_group_is_not_shrunk_by_weight_decay(tiny_model_dir):
    """With zero gradients AdamW only applies decay: the excluded tensors must not move."""
    model, _ = load_model(str(tiny_model_dir("qwen2")))
    opt = adamw(model, 0.1, 1.0, (0.9, 0.98), ("norms", "embeddings"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    excluded = {id(p) for p in opt.param_groups[1]["params"]}
    for n, p in model.named_parameters():
        if id(p) in excluded:
            assert torch.equal(p, before[n]), n
        elif before[n].abs().sum() > 0:  # decay leaves a zero tensor (a fresh bias) at zero
            assert not torch.equal(p, before[n]), n


def test_options_reach_the_optimizer_and_the_run_record(tmp_path, tiny_model_dir):
    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), sft_steps=2, max_steps=2, eval_every=0,
                           weight_decay=0.3, adam_betas="0.8,0.95", weight_decay_exclude="norms,embeddings",
                           sft_eos_loss=False, max_grad_norm=0.0))
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "optimizer.json").read_text())
    groups = saved["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0] and all(g["betas"] == [0.8, 0.95] for g in groups)
    assert trainer.optimizer.max_grad_norm is None
    run = read_log(trainer.run.log_path)[0]["config"]
    assert (run["adam_betas"], run["weight_decay_exclude"], run["sft_eos_loss"], run["max_grad_norm"]) == \
        ("0.8,0.95", "norms,embeddings", False, 0.0)


def test_resume_refuses_other_optimizer_shape_and_accepts_the_same(tmp_path, tiny_model_dir):
    model = tiny_model_dir("qwen2")
    common = {"sft_steps": 4, "eval_every": 0, "adam_betas": "0.9,0.98", "weight_decay": 0.1}
    train(config(tmp_path, model, max_steps=2, **common))
    with pytest.raises(UserError, match=r"--adam-betas '0.9,0.99' differs from the checkpoint's '0.9,0.98'.*resume with"):
        prepare_run(config(tmp_path, model, max_steps=4, resume=True, **{**common, "adam_betas": "0.9,0.99"}))
    with pytest.raises(UserError, match="--weight-decay-exclude 'norms' differs"):
        prepare_run(config(tmp_path, model, max_steps=4, resume=True, weight_decay_exclude="norms", **common))
    resumed = train(config(tmp_path, model, max_steps=4, resume=True, **common))
    assert resumed.step == 4 and resumed.optimizer.param_groups[0]["betas"] == (0.9, 0.98)



def test_resume_names_every_changed_option_and_continues_only_when_told(tmp_path, tiny_model_dir):
    model = tiny_model_dir("qwen2")
    common = {"sft_steps": 4, "eval_every": 0}
    train(config(tmp_path, model, max_steps=2, **common))
    with pytest.raises(UserError, match=r"--seed 7 differs from the checkpoint's 42.*--batch-size 4 differs.*--resume-with-changes"):
        prepare_run(config(tmp_path, model, max_steps=4, resume=True, seed=7, batch_size=4, **common))
    # options that do not change the weights' trajectory may differ without the flag
    prepare_run(config(tmp_path, model, max_steps=4, resume=True, eval_samples=3, threads=1, **common))
    resumed = train(config(tmp_path, model, max_steps=4, resume=True, resume_with_changes=True, seed=7, **common))
    assert resumed.step == 4
    with pytest.raises(UserError, match="--resume-with-changes only applies with --resume"):
        config(tmp_path, model, max_steps=4, resume_with_changes=True, **common)

# -- the supervised loss without EOS ---------------------------------------------------------
def _sft_loss(policy, rollout):
    logp, _ = policy.logprobs_with_entropy(rollout.actions, **rollout.inputs)
    return -logp.mean()


def test_sft_loss_without_eos_is_answer_tokens_only(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir("qwen2")))
    policy = HFPolicyAdapter(model, tok)
    prompts, answers = ["12+5=", "3+4="], ["17", "7"]
    with_eos = policy.teacher_forced(prompts, answers)
    without = policy.teacher_forced(prompts, answers, eos_in_loss=False)
    assert torch.equal(with_eos.actions, without.actions)  # same sequences, different loss mask
    assert without.inputs["completion_mask"].tolist() == [[1, 1, 0], [1, 0, 0]]
    assert with_eos.inputs["completion_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    loss_eos, loss_answer = _sft_loss(policy, with_eos), _sft_loss(policy, without)
    assert not torch.isclose(loss_eos, loss_answer)

    # by hand: mean over rows of the mean answer-token log-prob, no EOS term
    expected = []
    for prompt, answer in zip(prompts, answers):
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([p_ids + a_ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        expected.append(torch.stack([logp[len(p_ids) - 1 + i, t] for i, t in enumerate(a_ids)]).mean())
    torch.testing.assert_close(loss_answer.detach(), -torch.stack(expected).mean(), rtol=1e-5, atol=1e-5)

    # the EOS target no longer matters: replace it with another token
    other = tok("9", add_special_tokens=False)["input_ids"][0]
    for rollout in (with_eos, without):
        is_eos = rollout.actions == tok.eos_token_id
        rollout.actions = rollout.actions.masked_fill(is_eos, other)
        c = rollout.actions.shape[1]
        rollout.inputs["input_ids"][:, -c:] = rollout.actions
    torch.testing.assert_close(_sft_loss(policy, without), loss_answer)
    assert not torch.isclose(_sft_loss(policy, with_eos), loss_eos)


def test_sft_steps_log_the_answer_only_loss(tmp_path, tiny_model_dir):
    model = tiny_model_dir("qwen2")
    losses = {}
    for eos in (True, False):
        trainer = train(config(tmp_path / str(eos), model, sft_steps=1, max_steps=1, eval_every=0, sft_eos_loss=eos))
        losses[eos] = next(r for r in read_log(trainer.run.log_path) if r["kind"] == "step")["rl"]["loss"]
    assert losses[True] != pytest.approx(losses[False], rel=1e-3)


# -- no clipping -------------------------------------------------------------------------------
@pytest.mark.parametrize("max_norm, moved", [(None, 10.0), (1.0, 1.0)])
def test_max_grad_norm_none_does_not_clip(max_norm, moved):
    w = torch.nn.Parameter(torch.zeros(2))
    opt = ClippingOptimizer(torch.optim.SGD([w], lr=1.0), max_norm)
    w.grad = torch.tensor([6.0, 8.0])  # norm 10
    opt.step()
    assert opt.last_grad_norm == pytest.approx(10.0)
    assert w.detach().norm().item() == pytest.approx(moved)


@pytest.mark.parametrize("value, expected", [(0.0, None), (math.inf, None), (0.5, 0.5)])
def test_max_grad_norm_zero_or_inf_reaches_the_trainer_as_no_clip(tmp_path, tiny_model_dir, value, expected):
    trainer = DAPOHybridTrainer(prepare_run(config(tmp_path, tiny_model_dir("qwen2"), max_grad_norm=value)))
    assert trainer.optimizer.max_grad_norm == expected


# -- init seed ------------------------------------------------------------------------------
def test_init_model_seed_sets_the_initial_weights(tmp_path):
    spec = {"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        init_model(tmp_path / name, TinyModelSpec(**spec, seed=seed), number_tokens=5)
    w = {n: load_model(str(tmp_path / n))[0].model.embed_tokens.weight for n in "abc"}
    assert torch.equal(w["a"], w["b"]) and not torch.equal(w["a"], w["c"])


# -- the grokking preset and its verdict ------------------------------------------------------
def test_grokking_preset_parses_with_the_new_options():
    from rg_tracer.dapo.config import TrainConfig
    from tests.helpers import REPO

    cfg = TrainConfig.from_file(f"{REPO}/configs/grokking/mod31_sub.yaml")
    assert cfg.betas == (0.9, 0.98) and not cfg.sft_eos_loss and not cfg.clips_gradients
    assert cfg.sft_steps == cfg.max_steps and cfg.eval_every <= 50 and cfg.eval_samples == 0


def _grokking_files(tmp_path, test_curve, grokking):
    run, report = tmp_path / "seed0", tmp_path / "report"
    run.mkdir(), report.mkdir()
    lines = [{"kind": "run", "time": 0.0}]
    lines += [{"kind": "eval", "step": s, "split": "test", "metrics": {"correctness": v}, "time": float(s)}
              for s, v in test_curve]
    (run / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (report / "summary.json").write_text(json.dumps({"grokking": {"axis": "correctness", **grokking}}))
    return run, report


@pytest.mark.parametrize("curve, grokking, ok, says", [
    ([(100, 0.0), (300, 0.1), (500, 0.95)], {"status": "generalised", "memorisation_step": 100,
                                            "generalisation_step": 500}, True, "grokked (criterion met)"),
    ([(100, 0.0), (300, 0.5), (500, 0.95)], {"status": "generalised", "memorisation_step": 100,
                                            "generalisation_step": 500}, False, "did NOT grok"),
    ([(100, 0.0), (300, 0.1), (400, 0.95)], {"status": "generalised", "memorisation_step": 100,
                                            "generalisation_step": 400}, False, "needs >= 5M = 500"),
    ([(100, 0.0), (300, 0.5)], {"status": "memorised_only", "memorisation_step": 100,
                                "generalisation_step": None, "final_test": 0.54}, False, "did NOT generalise"),
])
def test_grokking_check_says_plainly_when_the_criterion_fails(tmp_path, curve, grokking, ok, says):
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("grokking_check", f"{REPO}/scripts/grokking_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    run, report = _grokking_files(tmp_path, curve, grokking)
    got_ok, line = check.verdict(run / "train.jsonl", report / "summary.json")
    assert got_ok is ok and says in line
    assert check.main([str(run), str(report)]) == 0  # not grokking is a result, not an error
    assert check.main([str(tmp_path / "missing"), str(report)]) == 1
