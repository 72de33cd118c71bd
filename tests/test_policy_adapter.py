import pytest
import torch

from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.models import load_model


@pytest.fixture(params=["gpt2", "llama", "qwen2"])
def policy(request, tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir(request.param)))
    return HFPolicyAdapter(model, tokenizer)


def _hand_logprob(policy, ids: list[int], prompt_len: int) -> float:
    """Mean log-prob of ids[prompt_len:] given the unpadded sequence, token by token."""
    with torch.no_grad():
        logits = policy.model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    terms = [logp[t - 1, ids[t]].item() for t in range(prompt_len, len(ids))]
    return sum(terms) / len(terms)


def test_logprobs_match_hand_computation_with_left_padding(policy):
    torch.manual_seed(0)
    rollout = policy.sample(["1+2=", "13+24=", "5="], group_size=2, max_new_tokens=5)
    with torch.no_grad():
        got = policy.logprobs(rollout.actions, **rollout.inputs)
    assert got.shape == (6,)
    for i in range(6):
        mask = rollout.inputs["attention_mask"][i].bool()
        ids = rollout.inputs["input_ids"][i][mask].tolist()
        want = _hand_logprob(policy, ids, rollout.prompt_tokens[i])
        assert got[i].item() == pytest.approx(want, abs=1e-4)


def test_groups_are_contiguous_and_prompt_major(policy):
    prompts = ["1+1=", "22+2=", "3="]
    rollout = policy.sample(prompts, group_size=3, max_new_tokens=3)
    n_prompt = rollout.inputs["input_ids"].shape[1] - rollout.actions.shape[1]
    prompt_part = rollout.inputs["input_ids"][:, :n_prompt]
    for g, prompt in enumerate(prompts):
        rows = prompt_part[g * 3:(g + 1) * 3]
        assert (rows == rows[0]).all()
        text = policy.tokenizer.decode(rows[0], skip_special_tokens=True)
        assert text == prompt


def test_completion_mask_stops_after_first_eos(policy):
    eos = policy.tokenizer.eos_token_id
    torch.manual_seed(0)
    rollout = policy.sample(["1+1="], group_size=1, max_new_tokens=4)
    # Force a known completion: digit, EOS, digit, digit.
    digit = policy.tokenizer.convert_tokens_to_ids("7")
    actions = torch.tensor([[digit, eos, digit, digit]])
    policy_inputs = dict(rollout.inputs)
    n_prompt = policy_inputs["input_ids"].shape[1] - rollout.actions.shape[1]
    policy_inputs["input_ids"] = torch.cat([policy_inputs["input_ids"][:, :n_prompt], actions], 1)
    mask = torch.tensor([[1, 1, 0, 0]])
    policy_inputs["attention_mask"] = torch.cat([policy_inputs["attention_mask"][:, :n_prompt], mask], 1)
    policy_inputs["completion_mask"] = mask
    with torch.no_grad():
        got = policy.logprobs(actions, **policy_inputs).item()
    ids = policy_inputs["input_ids"][0][:n_prompt + 2].tolist()
    assert got == pytest.approx(_hand_logprob(policy, ids, n_prompt), abs=1e-4)


def test_sample_marks_truncation_and_counts_eos(policy):
    torch.manual_seed(0)
    rollout = policy.sample(["1+1="] * 4, group_size=2, max_new_tokens=3)
    eos = policy.tokenizer.eos_token_id
    for row, (n, truncated) in enumerate(zip(rollout.completion_tokens, rollout.truncated)):
        assert 1 <= n <= 3
        last = rollout.actions[row, n - 1].item()
        if truncated:
            assert n == 3 and last != eos
        else:
            assert last == eos
    assert rollout.inputs["completion_mask"].sum(-1).tolist() == rollout.completion_tokens


def test_clone_is_frozen_eval_copy(policy):
    ref = policy.clone()
    assert not ref.model.training
    assert all(not p.requires_grad for p in ref.model.parameters())
    with torch.no_grad():
        next(policy.model.parameters()).add_(1.0)
    assert not torch.equal(next(ref.model.parameters()), next(policy.model.parameters()))


def test_forward_has_no_value_head_and_train_keeps_eval(policy):
    assert policy(input_ids=torch.zeros(1, 2, dtype=torch.long)).values is None
    policy.train()
    assert policy.training and not policy.model.training


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_char_tokenizer_round_trips_after_loading(tmp_path, arch):
    from rg_tracer.models import TinyModelSpec, init_model

    init_model(tmp_path / "m", TinyModelSpec(arch=arch, layers=1, hidden=16, heads=2), number_tokens=23)
    _, tokenizer = load_model(str(tmp_path / "m"))
    text = "12+5 = 17, x\nQ?"
    assert tokenizer.tokenize("12+5 =") == ["12", "+", "5", " ", "="]
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.mark.parametrize("greedy, temperature", [(False, 1.0), (False, 2.5), (True, 1.0)])
def test_cached_decode_gives_generates_tokens(policy, greedy, temperature):
    from rg_tracer.runtime.decode import cached_decode, supports_cached_decode

    assert supports_cached_decode(policy.model)
    tok = policy.tokenizer
    enc = tok(["1+2=", "13+24=", "5=", "99+1="], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"].repeat_interleave(2, 0), enc["attention_mask"].repeat_interleave(2, 0)
    torch.manual_seed(3)
    ours = cached_decode(policy.model, ids, mask, 24, tok.eos_token_id, tok.pad_token_id, temperature, greedy)
    torch.manual_seed(3)
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": 0,
                                                     "top_p": 1.0}
    with torch.no_grad():
        theirs = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                       **sampling)[:, ids.shape[1]:]
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # the families of the plain-ops decode step
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_finished_rows_leave_the_decode_step_and_tokens_stay_generates(tiny_model_dir, arch, temperature,
                                                                        monkeypatch):
    """Rows that emitted EOS are dropped from the plain-ops decode step (fewer rows per token),
    yet every token equals generate's for the same seed: the random draws are the whole batch's."""
    from rg_tracer.runtime.decode import cached_decode
    from rg_tracer.runtime.llama_step import LlamaStep, supports_llama_step

    model, tokenizer = load_model(str(tiny_model_dir(arch)))
    policy = HFPolicyAdapter(model, tokenizer)
    assert supports_llama_step(policy.model)
    held = []
    select = LlamaStep.select_rows
    monkeypatch.setattr(LlamaStep, "select_rows", lambda self, rows: (held.append(len(rows)), select(self, rows)))
    tok = policy.tokenizer
    with torch.no_grad():  # make EOS likely, so rows finish at many different lengths
        policy.model.get_output_embeddings().weight[tok.eos_token_id] *= 4
    enc = tok(["1+2=", "13+24=", "5=", "99+1="], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"].repeat_interleave(8, 0), enc["attention_mask"].repeat_interleave(8, 0)
    torch.manual_seed(5)
    ours = cached_decode(policy.model, ids, mask, 40, tok.eos_token_id, tok.pad_token_id, temperature)
    torch.manual_seed(5)
    with torch.no_grad():
        theirs = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=True,
                                       temperature=temperature, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id,
                                       eos_token_id=tok.eos_token_id)[:, ids.shape[1]:]
    lengths = ((theirs == tok.eos_token_id).int().argmax(-1) + 1).tolist()
    assert len(set(lengths)) > 3 and held, (lengths, held)  # rows finished at many lengths; some were dropped
    assert torch.equal(ours, theirs)
