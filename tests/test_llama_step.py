"""``LlamaStep`` does the model's own arithmetic: its logits match a full forward pass."""

import pytest
import torch
import transformers as tf

from rg_tracer.runtime import cpu_gemm
from rg_tracer.runtime.cpu_gemm import onednn_linear_works
from rg_tracer.runtime.decode import supports_cached_decode
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.runtime.llama_step import LlamaStep, supports_llama_step

VOCAB, PAD = 40, 0


def _model(kind: str, dtype=torch.float32):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=1,
                  bos_token_id=2)
    if kind == "qwen2-gqa":  # grouped kv heads, tied embeddings, yarn rope (attention scaling != 1)
        config = tf.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, rope_scaling={
            "rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}, **common)
    elif kind == "llama-bias":  # biases everywhere, head_dim != hidden / heads, llama3 rope
        config = tf.LlamaConfig(num_key_value_heads=1, attention_bias=True, mlp_bias=True, head_dim=24,
                                tie_word_embeddings=False, rope_scaling={
                                    "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                                **common)
    else:
        raise ValueError(kind)
    model = tf.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    with torch.no_grad():  # nonzero biases, so a dropped bias would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


def _prompts():
    ids = torch.randint(3, VOCAB, (3, 5))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("kind", ["qwen2-gqa", "llama-bias"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
@pytest.mark.parametrize("layout", ["onednn", "copy", "views"])  # views: the GPU layout
def test_step_logits_match_full_forward(kind, dtype, tol, layout, monkeypatch):
    if layout == "onednn" and (dtype != torch.float32 or not onednn_linear_works()):
        pytest.skip("oneDNN's layout is for float32 on a torch build that has it")
    monkeypatch.setattr(cpu_gemm, "MIN_MACS_PACKED", 0)  # these small projections too
    model = _model(kind, dtype)
    assert supports_llama_step(model)
    ids, mask = _prompts()
    new = torch.randint(3, VOCAB, (3, 4))
    cache = tf.DynamicCache(config=model.config)
    with torch.inference_mode():
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        step = LlamaStep(model, cache, mask, max_new_tokens=new.shape[1], layout=layout)
        got = torch.stack([step(new[:, t]) for t in range(new.shape[1])], 1).float()
        assert {step.layers[0][i].layout for i in (2, 3, 6, 7)} == {layout}  # qkv, o, gate/up, down
        full_ids, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
        want = model(input_ids=full_ids, attention_mask=full_mask,
                     position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, ids.shape[1]:].float()
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=tol, rtol=tol), (got - want).abs().max()


def test_sliding_window_models_sample_through_generate(tiny_model_dir):
    """A sliding-window cache holds fewer keys than the lean loop's mask: ``generate`` it is."""
    from rg_tracer.models import load_model

    _, tok = load_model(str(tiny_model_dir("qwen2")))
    config = tf.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2, use_sliding_window=True,
                            sliding_window=3, max_window_layers=0, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    assert not supports_cached_decode(model) and not supports_llama_step(model)
    policy = HFPolicyAdapter(model, tok)
    torch.manual_seed(5)
    rollout = policy.sample(["1+2=", "13+24="], group_size=2, max_new_tokens=6)
    torch.manual_seed(5)
    with torch.no_grad():
        theirs = model.generate(**{k: v[:, :-rollout.actions.shape[1]] for k, v in rollout.inputs.items()
                                   if k != "completion_mask"}, max_new_tokens=6, do_sample=True, top_k=0,
                                top_p=1.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert torch.equal(rollout.actions, theirs[:, -rollout.actions.shape[1]:])


def test_gpt2_is_not_a_llama():
    config = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)
    assert not supports_llama_step(tf.AutoModelForCausalLM.from_config(config))


def test_wrapped_or_hooked_modules_keep_the_models_forward():
    """A LoRA/quantisation wrapper or a hook must not be bypassed by the plain-ops step."""
    model = _model("qwen2-gqa")
    assert supports_llama_step(model)
    handle = model.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert not supports_llama_step(model)
    handle.remove()
    assert supports_llama_step(model)
    attn = model.model.layers[0].self_attn
    attn.forward = attn.forward  # an instance-level patch, as a user's monkeypatch would be
    assert not supports_llama_step(model)
    del attn.forward
    assert supports_llama_step(model)

    class Wrapped(torch.nn.Linear):
        pass

    proj = model.model.layers[1].self_attn.v_proj
    wrapped = Wrapped(proj.in_features, proj.out_features, bias=proj.bias is not None)
    wrapped.load_state_dict(proj.state_dict())
    model.model.layers[1].self_attn.v_proj = wrapped
    assert not supports_llama_step(model)


def test_no_lean_sampler_calls_generate(tiny_model_dir):
    from rg_tracer.models import load_model

    model, tok = load_model(str(tiny_model_dir("qwen2")))
    calls = []
    generate = model.generate
    model.generate = lambda **kw: calls.append(kw) or generate(**kw)
    HFPolicyAdapter(model, tok).sample(["1+2="], 2, 4)
    assert calls == []
    HFPolicyAdapter(model, tok, lean_sampler=False).sample(["1+2="], 2, 4)
    assert len(calls) == 1


def test_view_layout_shares_the_models_weights():
    """Off CPU the step must not hold a second copy of the weights."""
    model = _model("qwen2-gqa")
    ids, mask = _prompts()
    cache = tf.DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)
        step = LlamaStep(model, cache, mask, max_new_tokens=2, layout="views")
    params = {p.data_ptr() for p in model.parameters()}
    projections = [layer[i] for layer in step.layers for i in (2, 3, 6, 7)] + [step.lm_head]  # qkv, o, gate/up, down
    matrices = [m for proj in projections for m in proj.weight]
    assert len(matrices) == 2 * (3 + 1 + 2 + 1) + 1
    assert all(m.data_ptr() in params for m in matrices)


@pytest.mark.parametrize("kind", ["qwen2-gqa", "llama-bias"])
def test_lora_adapters_are_folded_into_the_cpu_step(kind):
    """peft LoRA layers (random B, so they act) on every projection: on CPU the step folds
    ``W + scaling * B A`` into its packed weights and its logits match the adapted model's forward;
    with the adapters disabled it gives the base model's."""
    peft = pytest.importorskip("peft")
    model = _model(kind)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    adapted = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    inner = adapted.get_base_model()
    assert supports_llama_step(inner)
    ids, mask = _prompts()
    new = torch.randint(3, VOCAB, (3, 4))

    def compare():
        cache = tf.DynamicCache(config=inner.config)
        with torch.inference_mode():
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            inner(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            step = LlamaStep(inner, cache, mask, max_new_tokens=new.shape[1])
            got = torch.stack([step(new[:, t]) for t in range(new.shape[1])], 1)
            full_ids, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
            want = inner(input_ids=full_ids, attention_mask=full_mask,
                         position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, ids.shape[1]:]
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
        return got

    adapted_logits = compare()
    with adapted.disable_adapter():
        base_logits = compare()
    assert (adapted_logits - base_logits).abs().max() > 1e-2  # the adapters changed the logits
