"""LoRA adapters (``--lora``, peft): what trains, the adapters-off KL reference, dropout only with
gradients, the lean sampler, bad options, checkpoints that hold the adapter, an exact resume,
and ``rg-tracer merge``."""

import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from rg_tracer.cli import cli
from rg_tracer.dapo.trainer import train
from rg_tracer.errors import UserError
from rg_tracer.models import load_model
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from tests.helpers import assert_one_line_error, config, invoke, read_log
from tests.test_checkpoints import assert_error, train_args

pytest.importorskip("peft")

from rg_tracer.runtime import lora  # noqa: E402  (after the skip: it needs peft at use)


def base_weights(model_dir) -> dict:
    return load_file(str(next(model_dir.glob("*.safetensors"))))


def adapter_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def steps(log) -> list[dict]:
    return [r for r in read_log(log) if r["kind"] == "step"]


def lora_model(model_dir, seed=0, **options):
    """The tiny model with adapters whose B is random (a fresh adapter is the base exactly)."""
    from rg_tracer.dapo.config import TrainConfig

    model, tokenizer = load_model(str(model_dir))
    cfg = TrainConfig(model=str(model_dir), dataset="unused", lora=True, **options)
    peft_model = lora.add_adapters(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return peft_model, tokenizer


def rollout(policy):
    torch.manual_seed(0)
    return policy.sample(["1+2=", "13+24=", "5="], group_size=2, max_new_tokens=5)


# -- 1. training: the adapters move, the base does not -----------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_lora_trains_the_adapters_and_leaves_the_base_bit_identical(tmp_path, tiny_model_dir, arch, monkeypatch):
    before = base_weights(tiny_model_dir(arch))
    monkeypatch.setattr(HFPolicyAdapter, "clone", lambda self: pytest.fail("the model was copied"))
    trainer = train(config(tmp_path, tiny_model_dir(arch), lora=True, kl_coef=0.1, eval_every=0))
    model = trainer.run.model
    reference = trainer.dapo.ref_policy  # the same module, adapters off: no copy
    assert isinstance(reference, lora.AdapterOffReference) and reference.model is model
    adapters = adapter_state(model)
    assert adapters and all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    assert any(bool(t.abs().sum()) for n, t in adapters.items() if "lora_B" in n), "no adapter moved"
    state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    for name, tensor in before.items():
        assert torch.equal(state[name], tensor), name
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for n, p in model.named_parameters() if "lora_" in n}

    records = read_log(trainer.run.log_path)
    described = records[0]["model"]["lora"]
    assert described["trainable_parameters"] == sum(t.numel() for t in adapters.values())
    assert described["base_weights_dtype"] == described["adapter_dtype"] == "float32"
    assert described["target_modules"] == list(lora.linear_layer_names(load_model(str(tiny_model_dir(arch)))[0]))
    first = steps(trainer.run.log_path)[0]
    assert first["rl"]["kl"] == 0.0  # B starts at zero: the policy is the reference exactly
    assert steps(trainer.run.log_path)[-1]["rl"]["kl"] != 0  # upstream's estimate: mean(logp - logp_ref), either sign
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json",
            "manifest.json"} <= files
    assert not any(name.startswith("model") and name.endswith(".safetensors") for name in files)


def test_linear_layer_names_leave_out_the_output_layer(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir("gpt2")))
    assert lora.linear_layer_names(model) == ("c_attn", "c_proj", "c_fc")
    model, _ = load_model(str(tiny_model_dir("qwen2")))
    assert lora.linear_layer_names(model) == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj")


# -- 2. the KL reference: the base model, no copy -----------------------------------------------------
def test_reference_with_adapters_off_is_the_base_model(tiny_model_dir):
    peft_model, tokenizer = lora_model(tiny_model_dir("qwen2"))
    policy = HFPolicyAdapter(peft_model.get_base_model(), tokenizer)
    batch = rollout(policy)
    reference = lora.AdapterOffReference(peft_model, tokenizer)
    base, _ = load_model(str(tiny_model_dir("qwen2")))
    want = HFPolicyAdapter(base, tokenizer).logprobs(batch.actions, **batch.inputs)
    with torch.no_grad():
        got = reference.logprobs(batch.actions, **batch.inputs)
    assert torch.equal(got, want)
    with torch.no_grad():  # the adapters are back on, and trainable, after the reference's forward
        adapted = policy.logprobs(batch.actions, **batch.inputs)
    assert not torch.allclose(adapted, want)
    assert all(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in peft_model.parameters())


# -- 3. dropout only in forwards with gradients; the lean sampler -------------------------------------
def test_lora_dropout_acts_only_in_forwards_with_gradients(tiny_model_dir):
    peft_model, tokenizer = lora_model(tiny_model_dir("qwen2"), lora_dropout=0.5)
    policy = HFPolicyAdapter(peft_model.get_base_model(), tokenizer)
    batch = rollout(policy)
    with torch.no_grad():
        a = policy.logprobs(batch.actions, **batch.inputs)
        b = policy.logprobs(batch.actions, **batch.inputs)
    assert torch.equal(a, b)
    c, _ = policy.logprobs_with_entropy(batch.actions, **batch.inputs)
    d, _ = policy.logprobs_with_entropy(batch.actions, **batch.inputs)
    assert not torch.equal(c.detach(), d.detach()) and not torch.allclose(c.detach(), a)
    assert not any(m.training for m in peft_model.get_base_model().modules())  # eval again, dropout included


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lean_sampler_gives_generates_tokens_for_a_lora_model(tiny_model_dir, arch):
    from rg_tracer.runtime.decode import supports_cached_decode
    from rg_tracer.runtime.llama_step import supports_llama_step

    peft_model, tokenizer = lora_model(tiny_model_dir(arch))
    model = peft_model.get_base_model()
    # on CPU a Llama's LoRA layers are folded into the plain-ops decode step; GPT-2 has its forward
    assert supports_cached_decode(model) and supports_llama_step(model) == (arch == "llama")
    lean = rollout(HFPolicyAdapter(model, tokenizer, lean_sampler=True))
    plain = rollout(HFPolicyAdapter(model, tokenizer, lean_sampler=False))
    assert torch.equal(lean.actions, plain.actions)
    base, _ = load_model(str(tiny_model_dir(arch)))
    assert not torch.equal(rollout(HFPolicyAdapter(base, tokenizer)).actions, lean.actions)  # the adapters act


# -- 4. bad input --------------------------------------------------------------------------------------
def test_target_modules_that_match_nothing_are_refused_naming_the_layers(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    result = invoke(cli, *train_args(tiny_model_dir("qwen2"), out, "--lora", "--lora-target-modules", "q_proj,x"))
    assert_one_line_error(result, "--lora-target-modules q_proj,x: 'x' matches no module of this qwen2 model; its "
                                  "linear layers are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")
    assert not out.exists()
    result = invoke(cli, *train_args(tiny_model_dir("gpt2"), out, "--lora", "--lora-target-modules", "wq,wv"))
    assert_one_line_error(result, "'wq', 'wv' match no module of this gpt2 model; its linear layers are c_attn, "
                                  "c_proj, c_fc")
    assert not out.exists()


def test_lora_rank_zero_is_refused_in_one_line_writing_nothing(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    assert_one_line_error(invoke(cli, *train_args(tiny_model_dir("qwen2"), out, "--lora", "--lora-r", 0)),
                          "--lora-r 0 must be >= 1")
    assert not out.exists()


def test_missing_peft_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(UserError, match=r"^--lora needs peft: pip install 'rg-tracer\[lora\]'$"):
        lora.require_peft()


# -- 5. mixed precision: a frozen half-precision base, float32 adapters ----------------------------------
def test_autocast_keeps_the_base_in_bfloat16_and_the_adapters_in_float32(tmp_path, tiny_model_dir):
    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), lora=True, dtype="bfloat16", eval_every=0,
                           max_steps=1, kl_coef=0.1))
    params = dict(trainer.run.model.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {torch.bfloat16}
    run = read_log(trainer.run.log_path)[0]
    assert run["model"]["precision"]["autocast"] is True
    assert (run["model"]["lora"]["base_weights_dtype"], run["model"]["lora"]["adapter_dtype"]) == ("bfloat16",
                                                                                                  "float32")
    assert steps(trainer.run.log_path)[0]["rl"]["grad_norm"] > 0


# -- 6. checkpoints and resume -----------------------------------------------------------------------------
LORA = ("--lora", "--lora-r", 4, "--lora-dropout", 0.1, "--kl-coef", 0.1, "--save-every", 2)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    """A finished LoRA run of 4 steps (dropout and KL on), checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("lora") / "run"
    result = invoke(cli, *train_args(tiny_model_dir("qwen2"), out, "--max-steps", 4, *LORA))
    assert result.exit_code == 0, result.output
    return out


def test_resume_continues_exactly_like_an_unbroken_run(tmp_path, tiny_model_dir, lora_run):
    out = tmp_path / "run"
    model = tiny_model_dir("qwen2")
    assert invoke(cli, *train_args(model, out, "--max-steps", 2, *LORA)).exit_code == 0
    result = invoke(cli, *train_args(model, out, "--max-steps", 4, "--resume", *LORA))
    assert result.exit_code == 0, result.output
    final = "checkpoints/step-000004/adapter_model.safetensors"
    want, got = load_file(str(lora_run / final)), load_file(str(out / final))
    assert want.keys() == got.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert [(s["step"], s["rl"]["loss"], s["rl"]["kl"]) for s in steps(out / "train.jsonl")] == \
           [(s["step"], s["rl"]["loss"], s["rl"]["kl"]) for s in steps(lora_run / "train.jsonl")]
    runs = [r for r in read_log(out / "train.jsonl") if r["kind"] == "run"]
    assert [r["resumed_from_step"] for r in runs] == [None, 2]


def test_resume_across_lora_and_full_fine_tuning_is_refused_in_one_line(tmp_path, tiny_model_dir, lora_run):
    model = tiny_model_dir("qwen2")
    out = tmp_path / "run"
    shutil.copytree(lora_run, out, ignore=shutil.ignore_patterns(".lock"))
    line = assert_error(invoke(cli, *train_args(model, out, "--max-steps", 5, "--resume")),
                        "holds a LoRA adapter", "add --lora")
    assert "corrupt" not in line
    line = assert_error(invoke(cli, *train_args(model, out, "--max-steps", 5, "--resume", "--lora", "--lora-r", 8,
                                                "--resume-with-changes")), "--lora-r 8 differs", "--lora-r 4")
    assert (out / "checkpoints" / "step-000004").is_dir()  # nothing set aside
    full = tmp_path / "full"
    assert invoke(cli, *train_args(model, full, "--max-steps", 1)).exit_code == 0
    assert_error(invoke(cli, *train_args(model, full, "--max-steps", 2, "--resume", "--lora")),
                 "holds full weights", "resume without --lora")


def test_resume_onto_a_model_the_adapter_does_not_fit_is_the_models_fault(tmp_path, tiny_model_dir, lora_run):
    out = tmp_path / "run"
    shutil.copytree(lora_run, out, ignore=shutil.ignore_patterns(".lock"))
    other = tmp_path / "wider"
    from rg_tracer.models import TinyModelSpec, init_model

    init_model(other, TinyModelSpec(arch="qwen2", layers=1, hidden=48, heads=2, seed=1))
    line = assert_error(invoke(cli, *train_args(other, out, "--max-steps", 5, "--resume", "--resume-with-changes",
                                                *LORA)), "does not fit --model", "size mismatch")
    assert f"resume with --model {tiny_model_dir('qwen2')}" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
def test_a_bad_adapter_file_falls_back_to_the_previous_checkpoint(tmp_path, tiny_model_dir, lora_run, name):
    out = tmp_path / "run"
    shutil.copytree(lora_run, out, ignore=shutil.ignore_patterns(".lock"))
    path = out / "checkpoints" / "step-000004" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = invoke(cli, *train_args(tiny_model_dir("qwen2"), out, "--max-steps", 4, "--resume", *LORA))
    assert result.exit_code == 0, result.output
    assert name in result.output and "step-000002" in result.output
    assert (out / "checkpoints" / "corrupt-step-000004").is_dir()
    final = "checkpoints/step-000004/adapter_model.safetensors"
    want, got = load_file(str(lora_run / final)), load_file(str(out / final))
    assert all(torch.equal(got[k], want[k]) for k in want)


# -- 7. rg-tracer merge ------------------------------------------------------------------------------------
def test_merge_gives_a_plain_model_with_the_adapter_models_logits(tmp_path, tiny_model_dir, lora_run):
    from peft import PeftModel

    out = tmp_path / "merged"
    result = invoke(cli, "merge", lora_run, "--out", out)  # a run directory: its newest checkpoint
    assert result.exit_code == 0, result.output
    assert "step-000004" in result.output and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    merged, tokenizer = load_model(str(out))
    base, _ = load_model(str(tiny_model_dir("qwen2")))
    adapted = PeftModel.from_pretrained(base, str(lora_run / "checkpoints" / "step-000004")).eval()
    ids = tokenizer(["1+2=", "13+24="], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        want = adapted(**ids).logits
        got = merged.eval()(**ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    plain, _ = load_model(str(tiny_model_dir("qwen2")))
    with torch.no_grad():
        assert not torch.allclose(got, plain.eval()(**ids).logits, atol=1e-4)  # the adapter was merged in

    # it trains as a plain --model
    result = invoke(cli, *train_args(out, tmp_path / "again", "--max-steps", 1))
    assert result.exit_code == 0, result.output

    # a non-empty --out, a full-weights checkpoint: one line each, nothing written
    assert_one_line_error(invoke(cli, "merge", lora_run, "--out", out), "is not empty")
    full = tmp_path / "full"
    assert invoke(cli, *train_args(tiny_model_dir("qwen2"), full, "--max-steps", 1)).exit_code == 0
    checkpoint = full / "checkpoints" / "step-000001"
    assert_one_line_error(invoke(cli, "merge", checkpoint, "--out", tmp_path / "m2"),
                          f"holds full weights (the run trained without --lora): it needs no merge; load it as it is "
                          f"with --model {checkpoint}")
    assert not (tmp_path / "m2").exists() and not list(tmp_path.glob(".tmp-*"))


# -- 8. torchrun: DDP over the adapters, the reference toggling them off --------------------------------
@pytest.mark.distributed
def test_two_processes_train_the_adapters_as_one_does(tmp_path, tiny_model_dir):
    from tests.distributed.test_distributed import launch, max_difference, train_config

    from rg_tracer.dapo.config import TrainConfig

    config = train_config(tiny_model_dir("qwen2"), seed_per_prompt=True, lora=True, eval_every=0, max_steps=3)
    two, (w2, w2b) = launch(tmp_path, "two", "train", **config)
    alone = train(TrainConfig(**config, output_dir=str(tmp_path / "one")))  # one process, this one
    one = read_log(alone.run.log_path)
    w1 = {k: v.detach() for k, v in alone.run.model.state_dict().items()}
    for a, b in zip(steps_of(one), steps_of(two), strict=True):
        assert b["rl"]["loss"] == pytest.approx(a["rl"]["loss"], rel=1e-5, abs=1e-6)
        assert (a["rl"]["kl"] is None) == (b["rl"]["kl"] is None)
    # to float rounding at lr 1e-2, as test_two_processes_equal_one_with_seed_per_prompt (1.3e-6 seen on an AMD EPYC)
    assert max_difference(w2, w2b) == 0.0 and max_difference(w1, w2) < 1e-5
    assert any(bool(w1[k].abs().sum()) for k in w1 if "lora_B" in k)


def steps_of(log: list[dict]) -> list[dict]:
    return [r for r in log if r["kind"] == "step"]
