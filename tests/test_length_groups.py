"""Training forwards over rows of similar length: the cuts, and the same numbers as one forward."""

import pytest
import torch

from rg_tracer.models import load_model
from rg_tracer.runtime.length_groups import length_groups
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter


def test_cuts_where_padding_costs_more_than_a_forward():
    lengths = torch.tensor([60, 3, 61, 4, 64, 2, 5, 63])
    groups = length_groups(lengths, overhead=20.0)  # 4 short rows padded to 64 waste ~240 positions
    assert [sorted(lengths[g].tolist()) for g in groups] == [[2, 3, 4, 5], [60, 61, 63, 64]]
    assert len(length_groups(lengths, overhead=1000.0)) == 1  # a forward costs more than the padding
    one = length_groups(torch.tensor([7, 7, 7]), overhead=0.0)
    assert len(one) == 1 and one[0].tolist() == [0, 1, 2]  # one length: the batch as it is
    every = length_groups(torch.tensor([1, 2, 3]), overhead=0.0)  # free forwards: one per length
    assert [g.tolist() for g in every] == [[0], [1], [2]]


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_grouped_forward_gives_one_forwards_log_probs_entropy_and_gradients(tiny_model_dir, arch):
    model, tokenizer = load_model(str(tiny_model_dir(arch)))
    policy = HFPolicyAdapter(model, tokenizer)
    torch.manual_seed(0)
    prompts = ["1+2=", "13+24=", "5=", "99+1="]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"].repeat_interleave(3, 0), enc["attention_mask"].repeat_interleave(3, 0)
    actions = torch.randint(3, 12, (12, 20))
    ends = torch.tensor([1, 2, 3, 15, 16, 20, 1, 19, 4, 20, 2, 18])  # completions of many lengths
    actions[torch.arange(20)[None, :] == (ends - 1)[:, None]] = tokenizer.eos_token_id
    rollout = policy._rollout(ids, mask, actions)

    def run(overhead):
        model.zero_grad()
        policy._overhead = overhead
        logp, entropy = policy.logprobs_with_entropy(rollout.actions, **rollout.inputs)
        (logp.sum() + entropy).backward()
        return logp.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]

    one_logp, one_entropy, one_grads = run(1e9)  # one group: one forward
    assert len(length_groups(rollout.inputs["completion_mask"].sum(-1), 0.5)) > 2
    logp, entropy, grads = run(0.5)  # several groups
    assert torch.allclose(logp, one_logp, atol=1e-5) and torch.allclose(entropy, one_entropy, atol=1e-5)
    for g, h in zip(grads, one_grads):
        assert torch.allclose(g, h, atol=1e-5, rtol=1e-4)
