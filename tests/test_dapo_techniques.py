"""DAPO-paper techniques around upstream's loss: hand-computed cases and tiny real runs."""

import math

import pytest
import torch
from gepa_dapo_grn import GEPAFeedback, RewardMixerConfig
from gepa_dapo_grn.dapo_core import _clip_advantages, _group_normalize

from rg_tracer.dapo.objective import (
    clip_fraction, group_advantages, loss_correction, mixed_rewards, policy_loss, zero_variance_groups,
)
from rg_tracer.dapo.sampling import overlong_penalty
from rg_tracer.dapo.trainer import train
from tests.helpers import config, read_log


@pytest.mark.parametrize("length, expected", [(0, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (10, -1.0), (12, -1.0)])
def test_overlong_penalty_boundaries(length, expected):
    assert overlong_penalty(length, max_len=10, buffer=4) == pytest.approx(expected)


def test_overlong_penalty_off_without_buffer():
    assert overlong_penalty(10, max_len=10, buffer=0) == 0.0


def test_advantages_match_upstream():
    scalar = torch.tensor([1.0, 0.0, 3.0, 3.0, 0.5, -2.0])
    ours = group_advantages(scalar, group_size=2, clip=0.5)
    torch.testing.assert_close(ours, _clip_advantages(_group_normalize(scalar, 2), 0.5))
    assert zero_variance_groups(scalar, 2).tolist() == [False, True, False]


def test_mixed_rewards_use_the_mixer_weights():
    mixer = RewardMixerConfig(weights={"a": 2.0, "b": -1.0}, normalize=False)
    fbs = [GEPAFeedback(rewards={"a": 1.0, "b": 1.0, "c": 9.0}), GEPAFeedback(rewards={"a": 0.5})]
    assert mixed_rewards(fbs, mixer).tolist() == [1.0, 1.0]


def test_clip_higher_correction_hand_computed():
    logp = torch.tensor([0.0, math.log(1.5), math.log(0.5)], requires_grad=True)
    old, adv = torch.zeros(3), torch.tensor([1.0, 1.0, -1.0])
    # ratios 1, 1.5, 0.5 -> DAPO clamp [0.8, 1.28]: 1, 1.28, 0.8 ; upstream clamp [0.8, 1.2]: 1, 1.2, 0.8
    correction = loss_correction(logp, old, adv, upstream_eps=0.2, eps_low=0.2, eps_high=0.28)
    assert correction.item() == pytest.approx(-(1.28 - 1.2) / 3)
    total = policy_loss(logp, old, adv, 0.2, 0.2) + correction
    (grad_total,) = torch.autograd.grad(total, logp)
    (grad_dapo,) = torch.autograd.grad(policy_loss(logp, old, adv, 0.2, 0.28), logp)
    torch.testing.assert_close(grad_total, grad_dapo)
    assert clip_fraction(torch.tensor([1.0, 1.5, 0.5]), 0.2, 0.28) == pytest.approx(2 / 3)
    assert clip_fraction(torch.tensor([1.0, 1.25, 0.85]), 0.2, 0.28) == 0.0


def test_masked_samples_contribute_nothing_and_no_op_is_none():
    logp = torch.tensor([0.1, -0.2], requires_grad=True)
    old, adv = torch.zeros(2), torch.tensor([1.0, -1.0])
    assert loss_correction(logp, old, adv, upstream_eps=0.2, eps_low=0.2, eps_high=0.2) is None
    weights = torch.tensor([1.0, 0.0])
    total = policy_loss(logp, old, adv, 0.2, 0.2) + loss_correction(
        logp, old, adv, upstream_eps=0.2, eps_low=0.2, eps_high=0.2, weights=weights)
    (grad,) = torch.autograd.grad(total, logp)
    assert grad[1].item() == 0.0 and grad[0].item() != 0.0


def test_dynamic_sampling_keeps_only_groups_with_variance(tmp_path, tiny_model_dir):
    mixer = tmp_path / "mixer.yaml"
    mixer.write_text("weights: {r: 1.0}\n")
    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), scorer="tests.scorers_fixture:EvenAnswersVary",
                           reward_mixer=str(mixer), batch_size=4, dynamic_sampling=True,
                           max_sampling_rounds=20, max_steps=2, eval_every=0))
    for step in [r for r in read_log(trainer.run.log_path) if r["kind"] == "step"]:
        answers = [int(g["prompt_id"].split("-")[1]) + int(g["prompt_id"].split("-")[2]) for g in step["generation"]]
        assert len(answers) == 8 and all(a % 2 == 0 for a in answers), answers
        assert step["rl"]["groups_kept"] == 4
        assert step["rl"]["groups_sampled"] >= 4
        assert step["rl"]["zero_std_group_frac"] == 0.0


def test_dynamic_sampling_cap_tops_up_with_dropped_groups(tmp_path, tiny_model_dir):
    mixer = tmp_path / "mixer.yaml"
    mixer.write_text("weights: {r: 1.0}\n")
    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), scorer="tests.scorers_fixture:EvenAnswersVary",
                           reward_mixer=str(mixer), batch_size=8, dynamic_sampling=True,
                           max_sampling_rounds=1, max_steps=1, eval_every=0))
    step = next(r for r in read_log(trainer.run.log_path) if r["kind"] == "step")
    assert len(step["generation"]) == 16 and step["rl"]["sampling_rounds"] == 1
    assert step["rl"]["groups_kept"] == round(8 * (1 - step["rl"]["zero_std_group_frac"]))


def test_several_updates_move_the_ratio(tmp_path, tiny_model_dir):
    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), updates_per_batch=4, learning_rate=0.05,
                           clip_ratio=0.01, clip_ratio_high=0.01, max_steps=1, eval_every=0))
    rl = next(r for r in read_log(trainer.run.log_path) if r["kind"] == "step")["rl"]
    assert rl["clip_ratio/update_1"] == 0.0  # the first update sees its own old log-probs
    assert rl["clip_ratio/update_4"] > 0.0
    assert rl["clip_ratio"] == pytest.approx(sum(rl[f"clip_ratio/update_{k}"] for k in range(1, 5)) / 4)


def test_kl_off_skips_the_reference_and_overlong_axis_is_logged(tmp_path, tiny_model_dir):
    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), kl_coef=0.0, overlong_buffer=2,
                           mask_truncated=True, max_steps=1, eval_every=0))
    assert type(trainer.dapo.ref_policy).__name__ == "NoReference"
    records = read_log(trainer.run.log_path)
    assert records[0]["reward_weights"]["overlong_penalty"] == 1.0
    step = records[1]
    assert step["rl"]["kl"] is None
    for sample, gen in zip(step["gepa"], step["generation"]):
        n = gen["completion_tokens"]
        assert sample["rewards"]["overlong_penalty"] == pytest.approx(overlong_penalty(n, 4, 2))
