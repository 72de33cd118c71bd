"""--dtype and --pure-dtype: mixed precision keeps small updates, the sampler and the training
forward agree, bad dtypes are refused, and the update builds on the log-probs' device."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rg_tracer.cli import cli
from rg_tracer.dapo.trainer import DAPOHybridTrainer, train
from rg_tracer.dapo.setup import prepare_run
from rg_tracer.models import load_model
from rg_tracer.runtime.decode import cached_decode
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.runtime.precision import Precision
from tests.helpers import TOY, MIXER, assert_one_line_error, config, invoke, read_log


def _saved_in(tmp_path, source, dtype) -> str:
    """``source``'s model saved again with its weights in ``dtype`` (config.json says so)."""
    model, tokenizer = load_model(str(source))
    out = tmp_path / f"model-{dtype}"
    model.to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def _moved(before: dict, model) -> float:
    """The fraction of weights that differ from ``before``."""
    changed = total = 0
    for name, p in model.named_parameters():
        changed += int((p.detach().float() != before[name]).sum())
        total += p.numel()
    return changed / total


def _fraction_moved(tmp_path, model_dir, **options) -> tuple[float, dict]:
    cfg = config(tmp_path, model_dir, max_steps=5, eval_every=0, learning_rate=1e-5, kl_coef=0.0, **options)
    run = prepare_run(cfg)
    before = {n: p.detach().float().clone() for n, p in run.model.named_parameters()}
    trainer = DAPOHybridTrainer(run)
    trainer.fit()
    from rg_tracer.runtime.run import release_run_dir
    release_run_dir(run.run_dir)
    return _moved(before, run.model), read_log(run.log_path)[0]


def test_a_bf16_model_trains_with_fp32_masters_and_pure_bf16_loses_updates(tmp_path, tiny_model_dir):
    bf16 = _saved_in(tmp_path, tiny_model_dir("qwen2"), torch.bfloat16)
    mixed, record = _fraction_moved(tmp_path / "auto", bf16)  # --dtype auto reads bf16 from config.json
    assert record["model"]["precision"] == {"compute": "bfloat16", "weights": "float32", "autocast": True}
    pure, pure_record = _fraction_moved(tmp_path / "pure", bf16, dtype="bfloat16", pure_dtype=True)
    assert pure_record["model"]["precision"] == {"compute": "bfloat16", "weights": "bfloat16", "autocast": False}
    print(f"weights moved after 5 steps at lr 1e-5: fp32 masters {mixed:.0%}, pure bf16 {pure:.0%}")
    assert mixed > 0.95
    assert pure < 0.5  # updates below bf16's resolution vanish


def test_float32_is_the_default_for_a_float32_model(tmp_path, tiny_model_dir):
    run = prepare_run(config(tmp_path, tiny_model_dir("qwen2")))
    from rg_tracer.runtime.run import release_run_dir
    release_run_dir(run.run_dir)
    assert run.precision == Precision() and not run.precision.autocast
    assert next(run.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
@pytest.mark.parametrize("compute, bound", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_sampler_and_training_forward_agree_on_log_probs(tiny_model_dir, arch, compute, bound):
    """The mean log-prob of each sampled completion, from the sampler's own distribution and
    from the training forward, under the same precision."""
    model, tokenizer = load_model(str(tiny_model_dir(arch)))
    precision = Precision(compute, torch.float32)
    policy = HFPolicyAdapter(model, tokenizer, precision=precision)
    enc = tokenizer(["12+3=", "7+45=", "1+1="], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"].repeat_interleave(4, 0), enc["attention_mask"].repeat_interleave(4, 0)
    torch.manual_seed(0)
    per_token: list[torch.Tensor] = []
    with precision.context("cpu"):
        actions = cached_decode(model, ids, mask, 12, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                token_logprobs=per_token)
    rollout = policy._rollout(ids, mask, actions)
    completion = rollout.inputs["completion_mask"].float()
    sampler = (torch.stack(per_token, 1) * completion).sum(1) / completion.sum(1)
    with torch.no_grad():
        trained = policy.logprobs(rollout.actions, **rollout.inputs)
    diff = float((sampler - trained).abs().max())
    print(f"{arch} {compute}: max |sampler - training| mean log-prob = {diff:.2e}")
    assert diff < bound


def test_bad_dtypes_are_refused_before_anything_is_written(tmp_path, tiny_model_dir):
    model = tiny_model_dir("qwen2")
    common = ["train", "--model", model, "--dataset", TOY, "--reward-mixer", MIXER, "--no-progress"]
    out = tmp_path / "r1"
    assert_one_line_error(invoke(cli, *common, "--output-dir", out, "--dtype", "int8"),
                          "--dtype 'int8' is not one of auto, float32, bfloat16, float16")
    assert_one_line_error(invoke(cli, *common, "--output-dir", out, "--dtype", "float16"),
                          "training in float16 needs a loss scaler")
    fp16 = _saved_in(tmp_path, model, torch.float16)
    result = invoke(cli, "train", "--model", fp16, "--dataset", TOY, "--reward-mixer", MIXER, "--no-progress",
                    "--output-dir", out)
    assert_one_line_error(result, f"--dtype auto: {fp16} is saved in float16")
    assert not out.exists()


def test_eggroll_accepts_float16(tmp_path, tiny_model_dir):
    """ES computes no gradients, so half precision needs no loss scaler."""
    result = invoke(cli, "eggroll", "--model", tiny_model_dir("qwen2"), "--dataset", TOY, "--reward-mixer", MIXER,
                    "--output-dir", tmp_path / "es", "--dtype", "float16", "--population", "4", "--generations", "1",
                    "--prompts", "2", "--eval-every", "0", "--no-progress", "--threads", "1")
    assert result.exit_code == 0, result.output
    run = read_log(tmp_path / "es" / "train.jsonl")[0]
    assert run["model"]["precision"] == {"compute": "float16", "weights": "float32", "autocast": True}


class _MetaScalars(TorchDispatchMode):
    """Reading a number out of a meta tensor (``.item()``, ``float()``, ``bool()``) gives 1."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return True if args[0].dtype == torch.bool else 1.0 if args[0].dtype.is_floating_point else 1
        return func(*args, **(kwargs or {}))


def test_the_update_builds_on_the_log_probs_device(tmp_path, tiny_model_dir):
    """Upstream mixes rewards into a CPU tensor; on CUDA that met CUDA log-probs at step 1. The
    meta device refuses a CPU operand exactly as CUDA does (0-dim CPU scalars aside), so a whole
    update (forward, loss, backward, clipping, AdamW) with the model and the rollout on meta
    runs only if every tensor it builds follows the log-probs' device (shown to fail with
    upstream's own trainer in place of ``upstream._DeviceSafeTrainer``)."""
    cfg = config(tmp_path, tiny_model_dir("qwen2"), kl_coef=0.1, entropy_coef=0.01, mask_truncated=True,
                 clip_ratio_high=0.28, eval_every=0)
    run = prepare_run(cfg)
    from rg_tracer.runtime.run import release_run_dir
    release_run_dir(run.run_dir)
    run.reference_model, _ = load_model(str(cfg.model))  # a real reference forward, as on resume
    trainer = DAPOHybridTrainer(run)
    batch = trainer.sampler.sample(1)  # on the CPU, as sampled
    from rg_tracer.dapo.objective import mixed_rewards

    scalar = mixed_rewards(batch.feedbacks, run.mixer)
    run.model.to("meta")
    run.reference_model.to("meta")
    batch.rollout.inputs = {k: v.to("meta") for k, v in batch.rollout.inputs.items()}
    batch.rollout.actions = batch.rollout.actions.to("meta")
    batch.rollout.truncated = [True] + batch.rollout.truncated[1:]  # the truncation weights are built
    with _MetaScalars():
        metrics = trainer._update(batch, scalar)
    assert metrics["kl"] == 1.0  # read from a meta tensor: the KL term was computed there
    assert next(run.model.parameters()).device.type == "meta"
