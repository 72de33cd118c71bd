"""Tiny real training runs: the real DAPOTrainer on randomly initialised HF models."""

import pytest
import torch
from safetensors.torch import load_file

from rg_tracer.dapo.trainer import train
from rg_tracer.errors import UserError
from rg_tracer.schema import RL_KEYS
from tests.helpers import config, read_log


def weights(model_dir):
    return load_file(str(next(model_dir.glob("*.safetensors"))))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_two_steps_train_and_log_valid_records(tmp_path, tiny_model_dir, arch):
    before = weights(tiny_model_dir(arch))
    trainer = train(config(tmp_path, tiny_model_dir(arch)))
    after = {k: v for k, v in trainer.run.model.state_dict().items() if k in before}
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"

    records = read_log(trainer.run.log_path)
    assert [r["kind"] for r in records] == ["run", "eval", "eval", "step", "step", "eval", "eval", "end"]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 0, 2, 2]  # a baseline, then the end
    run, step = records[0], records[3]
    assert run["resumed_from_step"] is None and run["reward_weights"]["correctness"] == 1.0
    assert set(RL_KEYS) <= set(step["rl"])
    assert all(step["rl"][k] is not None for k in RL_KEYS)
    assert step["rl"]["grad_norm"] > 0 and step["rl"]["lr"] == 1e-2
    assert len(step["gepa"]) == len(step["generation"]) == 4
    ids = [g["prompt_id"] for g in step["generation"]]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]  # prompt-major groups
    assert {"correctness", "reasoning_quality", "format_penalty"} <= set(step["gepa"][0]["rewards"])
    assert step["gepa"][0]["tags"].keys() == {"answer_length"}
    assert [r["split"] for r in records[5:7]] == ["test", "train"]
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.json").is_file()


def test_resume_continues_like_an_uninterrupted_run(tmp_path, tiny_model_dir):
    model = tiny_model_dir("qwen2")
    whole = train(config(tmp_path / "a", model, max_steps=4, kl_coef=0.1, eval_every=0))
    train(config(tmp_path / "b", model, max_steps=2, kl_coef=0.1, eval_every=0))
    resumed = train(config(tmp_path / "b", model, max_steps=4, kl_coef=0.1, eval_every=0, resume=True))

    for name, tensor in whole.run.model.state_dict().items():
        torch.testing.assert_close(resumed.run.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
    records = read_log(resumed.run.log_path)
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]
    runs = [r for r in records if r["kind"] == "run"]
    assert [r["resumed_from_step"] for r in runs] == [None, 2]
    whole_steps = [r for r in read_log(whole.run.log_path) if r["kind"] == "step"]
    resumed_steps = [r for r in records if r["kind"] == "step"]
    assert [g["completion"] for g in whole_steps[3]["generation"]] == [g["completion"] for g in resumed_steps[3]["generation"]]


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir("qwen2"), max_steps=1, eval_every=0)
    train(cfg)
    log_before = (tmp_path / "run" / "train.jsonl").read_bytes()
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train(cfg)
    assert (tmp_path / "run" / "train.jsonl").read_bytes() == log_before
    train(config(tmp_path, tiny_model_dir("qwen2"), max_steps=1, eval_every=0, overwrite=True))
    assert sum(r["kind"] == "run" for r in read_log(tmp_path / "run" / "train.jsonl")) == 1


@pytest.mark.parametrize("scorer, message", [
    ("tests.scorers_fixture:NaNScorer", "key 'correctness' is nan"),
    ("tests.scorers_fixture:ShortScorer", "returned 1 rows for 4 completions"),
    ("tests.scorers_fixture:AccuracyScorer", "no reward-mixer weight matches"),
])
def test_bad_scorer_output_fails_before_anything_is_written(tmp_path, tiny_model_dir, scorer, message):
    with pytest.raises(UserError, match=message):
        train(config(tmp_path, tiny_model_dir("qwen2"), scorer=scorer))
    assert not (tmp_path / "run" / "train.jsonl").exists()


def test_entropy_bonus_and_adaptive_kl_reach_the_update(tmp_path, tiny_model_dir):
    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), entropy_coef=0.5, kl_target=0.01, kl_horizon=1.0))
    steps = [r for r in read_log(trainer.run.log_path) if r["kind"] == "step"]
    # The KL weight applied at step 2 is the one upstream's rule moved after step 1.
    kl1 = steps[0]["rl"]["kl"]
    assert steps[1]["rl"]["kl_coeff"] == pytest.approx(0.1 * torch.exp(torch.tensor((kl1 - 0.01) / 1.0)).item(), rel=1e-5)
    assert steps[0]["rl"]["entropy"] > 0


def test_the_default_reward_mixer_works_outside_the_repository(tmp_path, tiny_model_dir, monkeypatch):
    from rg_tracer.reward_mixer import PACKAGED_MIXER

    monkeypatch.chdir(tmp_path)  # no configs/ here: the packaged default is used
    cfg = config(tmp_path, tiny_model_dir("qwen2"), max_steps=1, eval_every=0)
    cfg = type(cfg)(**{**cfg.to_dict(), "reward_mixer": "configs/reward_mixer.yaml"})
    trainer = train(cfg)
    assert trainer.step == 1 and PACKAGED_MIXER.is_file()
    assert read_log(trainer.run.log_path)[0]["reward_weights"]["correctness"] == 1.0


def test_eval_records_keep_a_few_held_out_completions(tmp_path, tiny_model_dir):
    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), max_steps=2, eval_every=2, eval_samples=10))
    evals = [r for r in read_log(trainer.run.log_path) if r["kind"] == "eval"]
    test = [r for r in evals if r["split"] == "test"][-1]
    assert len(test["samples"]) == 8 and test["n"] == 10
    first = test["samples"][0]
    assert set(first) == {"prompt_id", "prompt", "answer", "completion", "scores"}
    assert set(first["scores"]) >= set(test["metrics"]) - {"answer_length"}


def test_unset_threads_take_one_for_a_small_model_on_cpu(tmp_path, tiny_model_dir):
    from rg_tracer.dapo.setup import prepare_run
    from rg_tracer.runtime.run import release_run_dir

    torch.set_num_threads(2)
    try:
        run = prepare_run(config(tmp_path, tiny_model_dir("qwen2"), threads=None))  # 137k parameters
        assert torch.get_num_threads() == 1
        release_run_dir(run.run_dir)
    finally:
        torch.set_num_threads(1)
