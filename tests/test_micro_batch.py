"""--micro-batch-size: the chunked update has the whole batch's gradient (gradient caching), the
same weights and metrics after full steps, chunked sampling keeps rows as they were, and a size
that does not divide the batch is refused."""

import contextlib

import pytest
import torch
from gepa_dapo_grn import GEPAFeedback

from rg_tracer.cli import cli
from rg_tracer.dapo import micro_batch
from rg_tracer.dapo.objective import mixed_rewards
from rg_tracer.dapo.sampling import ScoredBatch
from rg_tracer.dapo.setup import prepare_run
from rg_tracer.dapo.trainer import DAPOHybridTrainer, train
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter, row_chunks
from rg_tracer.runtime.run import release_run_dir
from tests.helpers import MIXER, TOY, assert_one_line_error, config, invoke, read_log

OBJECTIVE = dict(kl_coef=0.1, entropy_coef=0.05, clip_ratio=0.2, clip_ratio_high=0.28, mask_truncated=True,
                 updates_per_batch=2, eval_every=0)
PROMPTS = ["1+2=", "12+3=", "4+56=", "7="]  # different lengths: left padding
G = 4
EOS_AT = [1, 3, None, 0, 2, None, 4, None, 0, 1, None, 2, 3, None, None, 1]  # None: truncated


def _batch(policy: HFPolicyAdapter) -> ScoredBatch:
    """A fixed rollout (completions of different lengths, some truncated) with fixed rewards."""
    tok = policy.tokenizer
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ids = enc["input_ids"].repeat_interleave(G, 0)
    mask = enc["attention_mask"].repeat_interleave(G, 0)
    digits = tok("0123456789+=", add_special_tokens=False)["input_ids"]
    gen = torch.Generator().manual_seed(3)
    actions = torch.tensor(digits)[torch.randint(len(digits), (len(EOS_AT), 5), generator=gen)]
    for row, at in enumerate(EOS_AT):
        if at is not None:
            actions[row, at] = tok.eos_token_id
    rollout = policy._rollout(ids, mask, actions)
    assert 0 < sum(rollout.truncated) < len(EOS_AT)
    rewards = torch.rand(len(EOS_AT), 2, generator=gen).tolist()
    feedbacks = [GEPAFeedback(rewards={"correctness": a, "reasoning_quality": b}, tags={}, meta={}, abstained=False)
                 for a, b in rewards]
    return ScoredBatch([None] * len(EOS_AT), rollout, feedbacks)


def _update_gradients(tmp_path, model, micro: int, name: str) -> tuple[list[list[torch.Tensor]], dict]:
    """Every parameter's gradient right before each AdamW step of ``_update`` on the fixed batch."""
    cfg = config(tmp_path / name, model, batch_size=len(PROMPTS), group_size=G, micro_batch_size=micro, **OBJECTIVE)
    run = prepare_run(cfg)
    try:
        trainer = DAPOHybridTrainer(run)
        seen, check = [], trainer.optimizer.grad_filter

        def record(params, norm):
            seen.append([p.grad.detach().clone() for p in params])
            return check(params, norm)

        trainer.optimizer.grad_filter = record
        batch = _batch(trainer.policy)
        rl = trainer._update(batch, mixed_rewards(batch.feedbacks, run.mixer))
    finally:
        release_run_dir(run.run_dir)
    assert len(seen) == OBJECTIVE["updates_per_batch"]
    return seen, rl


def _max_difference(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> float:
    return max((x - y).abs().max().item() for ua, ub in zip(a, b, strict=True) for x, y in zip(ua, ub, strict=True))


def test_micro_batches_give_the_whole_batch_gradient(tmp_path, tiny_model_dir):
    model = tiny_model_dir("qwen2")
    whole, rl_whole = _update_gradients(tmp_path, model, 0, "whole")
    assert all(g.abs().max() > 0 for g in whole[1][:3])  # a real gradient, not zeros compared with zeros
    for micro in (2, 4, 8):
        chunked, rl = _update_gradients(tmp_path, model, micro, f"micro{micro}")
        assert _max_difference(whole, chunked) < 1e-6, micro
        for key in ("loss", "policy_loss", "kl", "entropy", "grad_norm", "clip_ratio"):
            assert rl[key] == pytest.approx(rl_whole[key], rel=1e-5, abs=1e-6), key


def test_a_dropped_chunk_is_caught(tmp_path, tiny_model_dir, monkeypatch):
    """The comparison above fails when accumulation is wrong: here the last chunk's backward is skipped."""
    model = tiny_model_dir("qwen2")
    whole, _ = _update_gradients(tmp_path, model, 0, "whole")
    backward = micro_batch.GradientCache.backward

    def drop_last(self):
        self.chunks = self.chunks[:-1]
        backward(self)

    monkeypatch.setattr(micro_batch.GradientCache, "backward", drop_last)
    broken, _ = _update_gradients(tmp_path, model, 4, "broken")
    assert _max_difference(whole, broken) > 1e-3


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory, tiny_model_dir):
    """Three steps (one supervised, two RL) without and with micro-batches. Each prompt's group is
    sampled in one call of G rows <= the micro batch (--seed-per-prompt), so the batches are the same.
    Learning rate 1e-3: the attention key bias has a zero gradient in exact arithmetic (softmax
    ignores a shift of every score), i.e. float noise of ~1e-9 either way, which AdamW's
    normalisation turns into steps of about the learning rate: with 1e-2 that bias alone differs
    by up to 4e-6 after three steps (every other weight by < 5e-7)."""
    model = tiny_model_dir("qwen2")
    runs = {}
    for micro in (0, 2, 4):
        tmp = tmp_path_factory.mktemp(f"full{micro}")
        trainer = train(config(tmp, model, batch_size=4, group_size=2, max_steps=3, sft_steps=1, sft_batch_size=3,
                               seed_per_prompt=True, micro_batch_size=micro, **{**OBJECTIVE, "learning_rate": 1e-3}))
        weights = {k: v.detach().clone() for k, v in trainer.run.model.state_dict().items()}
        runs[micro] = (weights, [r for r in read_log(trainer.run.log_path) if r["kind"] == "step"])
    return runs


def test_full_steps_end_with_the_same_weights(full_runs):
    whole, _ = full_runs[0]
    for micro in (2, 4):
        weights, _ = full_runs[micro]
        assert max((weights[k] - whole[k]).abs().max().item() for k in whole) < 1e-6, micro


def test_full_steps_log_the_same_metrics(full_runs):
    _, whole = full_runs[0]
    assert [r["phase"] for r in whole] == ["sft", "rl", "rl"]
    for micro in (2, 4):
        _, steps = full_runs[micro]
        for a, b in zip(whole, steps, strict=True):
            assert [g["completion"] for g in a["generation"]] == [g["completion"] for g in b["generation"]]
            for key in ("loss", "kl", "entropy", "grad_norm"):
                if a["rl"].get(key) is not None or b["rl"].get(key) is not None:
                    assert b["rl"][key] == pytest.approx(a["rl"][key], rel=1e-5, abs=1e-6), (micro, a["step"], key)


def test_a_micro_batch_that_does_not_divide_the_batch_is_refused(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    result = invoke(cli, "train", "--model", tiny_model_dir("qwen2"), "--dataset", TOY, "--reward-mixer", MIXER,
                    "--output-dir", out, "--batch-size", "2", "--group-size", "3", "--micro-batch-size", "4",
                    "--max-steps", "1", "--threads", "1", "--no-progress")
    assert_one_line_error(result, "--micro-batch-size 4 does not divide the 6 completions")
    assert "such as 3" in result.output
    assert not out.exists()


def test_row_chunks():
    assert row_chunks(8, 0) == [slice(0, 8)] and row_chunks(8, 8) == [slice(0, 8)]
    assert row_chunks(8, 4, group=2) == [slice(0, 4), slice(4, 8)]
    assert row_chunks(6, 4, group=2) == [slice(0, 4), slice(4, 6)]  # whole groups per call
    assert row_chunks(6, 2, group=3) == [slice(0, 2), slice(2, 3), slice(3, 5), slice(5, 6)]  # a group split
    assert row_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


@pytest.mark.parametrize("lean", [True, False])
def test_chunked_sampling_keeps_rows_and_greedy_tokens(tiny_model_dir, lean):
    from rg_tracer.models import load_model

    model, tok = load_model(str(tiny_model_dir("qwen2")))
    policy = HFPolicyAdapter(model, tok, lean_sampler=lean)
    whole = policy.sample(PROMPTS, 3, 6, greedy=True)
    for micro in (1, 2, 3, 5):
        policy.micro_batch = micro
        chunked = policy.sample(PROMPTS, 3, 6, greedy=True)
        for key, value in whole.inputs.items():
            assert torch.equal(chunked.inputs[key], value), (micro, key)
        assert torch.equal(chunked.actions, whole.actions)
        assert (chunked.completions, chunked.truncated, chunked.completion_tokens, chunked.prompt_tokens) == (
            whole.completions, whole.truncated, whole.completion_tokens, whole.prompt_tokens)
        # sampled: other draws, the same shapes and a consistent mask
        torch.manual_seed(0)
        drawn = policy.sample(PROMPTS, 3, 6)
        assert drawn.actions.shape[0] == 12 and drawn.inputs["input_ids"].shape[1] == (
            whole.inputs["input_ids"].shape[1] - whole.actions.shape[1] + drawn.actions.shape[1])
        assert drawn.completion_tokens == drawn.inputs["completion_mask"].sum(-1).tolist()
        # the no-grad log-probs (the KL reference's forward) in chunks equal one forward's
        policy.micro_batch = 0
        one = policy.logprobs(drawn.actions, **drawn.inputs)
        policy.micro_batch = micro
        torch.testing.assert_close(policy.logprobs(drawn.actions, **drawn.inputs), one, rtol=1e-5, atol=1e-6)


def test_a_random_forward_draws_the_same_in_both_passes(tiny_model_dir, monkeypatch):
    """Attention dropout on (as LoRA dropout would be): each chunk's gradient forward replays the
    random draws of its values forward, so the gradient is taken where the loss was evaluated."""
    from rg_tracer.models import load_model

    model, tok = load_model(str(tiny_model_dir("qwen2")))
    policy = HFPolicyAdapter(model, tok)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
        layer.self_attn.train()
    batch = _batch(policy).rollout
    forwards = []
    forward = policy.logprobs_with_entropy

    def recorded(actions, **inputs):
        forwards.append(forward(actions, **inputs))
        return forwards[-1]

    monkeypatch.setattr(policy, "logprobs_with_entropy", recorded)

    def passes():
        forwards.clear()
        cache = micro_batch.GradientCache(policy, 4)
        logp, entropy = cache.score(batch.actions, batch.inputs)
        (logp.sum() + entropy).backward()
        state = torch.get_rng_state()
        cache.backward()
        n = len(cache.chunks)
        pairs = [(a[0].detach(), b[0].detach()) for a, b in zip(forwards[:n], forwards[n:], strict=True)]
        return pairs, torch.equal(torch.get_rng_state(), state)

    pairs, stream_kept = passes()
    assert all(torch.equal(a, b) for a, b in pairs)
    assert stream_kept  # the random stream continues from where the values pass left it
    monkeypatch.setattr(micro_batch._RandState, "replayed", lambda self: contextlib.nullcontext())
    pairs, _ = passes()
    assert not all(torch.equal(a, b) for a, b in pairs)  # dropout is really on: without the replay they differ
