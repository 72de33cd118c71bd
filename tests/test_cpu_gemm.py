"""``--cpu-gemm onednn``: fp32 linears on oneDNN give aten's values and gradients to float rounding."""

import platform

import pytest
import torch
import torch.nn.functional as F

from rg_tracer.cli import cli
from rg_tracer.errors import UserError
from rg_tracer.runtime import cpu_gemm
from rg_tracer.runtime.cpu_gemm import OneDNNLinears, linear_kernels, onednn_linear_works, resolve_cpu_gemm
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from tests.helpers import TOY, MIXER, assert_one_line_error, config, invoke, read_log

needs_onednn = pytest.mark.skipif(not onednn_linear_works(), reason="this torch build has no oneDNN fp32 linear")


def _close(a, b, rel=1e-5):
    return float((a - b).abs().max()) <= rel * max(float(b.abs().max()), 1e-6)


@pytest.fixture
def any_size(monkeypatch):
    """Small products to oneDNN too (normally they stay on aten: ``worth_it``)."""
    monkeypatch.setattr(cpu_gemm, "MIN_MACS", 0)


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 12), (3, 5, 12), (2, 150, 12)], ids=["2d", "3d", "chunked"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_aten_in_value_and_gradient(shape, bias, any_size):
    """Including 300 rows: three chunks of at most ``CHUNK``, the last one zero-padded."""
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(9, 12, requires_grad=True)
    b = torch.randn(9, requires_grad=True) if bias else None
    g = torch.randn(*shape[:-1], 9)

    def run(mode):
        with mode:
            y = F.linear(x, w, b)
        grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], g)
        return y, grads

    y_aten, grads_aten = run(linear_kernels("aten", "cpu"))
    y, grads = run(OneDNNLinears())
    assert y.grad_fn.name() == "_LinearBackward"  # the oneDNN function ran, not aten's linear
    assert y.shape == y_aten.shape and _close(y, y_aten)
    assert all(_close(a, b_) for a, b_ in zip(grads, grads_aten))


@needs_onednn
def test_frozen_weight_and_no_grad_paths(any_size):
    torch.manual_seed(1)
    x, w = torch.randn(4, 6, requires_grad=True), torch.randn(3, 6)  # a frozen weight: only dX
    with OneDNNLinears():
        y = F.linear(x, w)
    (dx,) = torch.autograd.grad(y.sum(), [x])
    assert _close(dx, torch.ones(4, 3) @ w)
    with torch.inference_mode(), OneDNNLinears():
        z = F.linear(x.detach(), w)
    assert _close(z, x.detach() @ w.t())


def test_ineligible_calls_run_atens_linear(any_size):
    """Half precision and autocast keep aten's kernel (bit-equal), and so does a small product."""
    torch.manual_seed(2)
    x, w = torch.randn(4, 6, requires_grad=True), torch.randn(3, 6)
    with OneDNNLinears():
        half = F.linear(x.bfloat16(), w.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = F.linear(x, w)
    assert torch.equal(half, F.linear(x.bfloat16(), w.bfloat16()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(auto, F.linear(x, w))
    cpu_gemm.MIN_MACS = 4 * 3 * 6 + 1
    with OneDNNLinears():
        small = F.linear(x, w)
    assert small.grad_fn.name() != "_LinearBackward" and torch.equal(small, F.linear(x, w))


def test_row_counts_are_bounded():
    """Every call computes one of 7 row counts, so oneDNN builds few kernels; padding wastes
    less than the rows asked for, beyond the powers of two of a decode step."""
    counts = {cpu_gemm.rows_of(n) for n in range(1, cpu_gemm.CHUNK + 1)}
    assert counts == {1, 2, 4, 8, 16, 64, 128}
    assert all(0 <= cpu_gemm.rows_of(n) - n < (n if n <= 16 else 64) for n in range(1, cpu_gemm.CHUNK + 1))
    assert cpu_gemm.worth_it(16, (768, 256), packed=True) and not cpu_gemm.worth_it(16, (192, 64), packed=True)
    assert cpu_gemm.worth_it(10_000, (768, 256)) and not cpu_gemm.worth_it(10_000, (192, 64))


def test_resolve_cpu_gemm(monkeypatch):
    assert resolve_cpu_gemm("aten") == "aten"
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    not_intel = cpu_gemm.cpu_vendor() not in ("GenuineIntel", "")
    assert resolve_cpu_gemm("auto") == ("onednn" if x86 and not_intel and onednn_linear_works() else "aten")
    monkeypatch.setattr(cpu_gemm, "cpu_vendor", lambda: "GenuineIntel")
    assert resolve_cpu_gemm("auto") == "aten"
    with pytest.raises(ValueError):
        resolve_cpu_gemm("mkl")
    monkeypatch.setattr(cpu_gemm, "onednn_linear_works", lambda: False)  # a build without oneDNN
    assert resolve_cpu_gemm("auto") == "aten"
    with pytest.raises(UserError, match="--cpu-gemm onednn: .* pass --cpu-gemm auto or aten"):
        resolve_cpu_gemm("onednn")


@needs_onednn
def test_policy_training_forward_agrees_across_kernels(tiny_model_dir, any_size, monkeypatch):
    """The same model's log-probs, entropy and gradients through both kernels."""
    from rg_tracer.models import load_model

    calls = []
    apply = cpu_gemm._Linear.apply
    monkeypatch.setattr(cpu_gemm._Linear, "apply", lambda *args: calls.append(1) or apply(*args))
    model, tok = load_model(str(tiny_model_dir("qwen2")))
    rollout = HFPolicyAdapter(model, tok, cpu_gemm="aten").sample(["1+2=", "13+24="], 3, 6)
    results = {}
    for gemm in ("aten", "onednn"):
        model.zero_grad()
        policy = HFPolicyAdapter(model, tok, cpu_gemm=gemm)
        assert policy.gemm == gemm
        logp, entropy = policy.logprobs_with_entropy(rollout.actions, **rollout.inputs)
        (logp.sum() + entropy).backward()
        assert bool(calls) == (gemm == "onednn")
        calls.clear()
        results[gemm] = (logp.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()])
    (la, ea, ga), (lo, eo, go) = results["aten"], results["onednn"]
    assert _close(lo, la) and _close(eo, ea)
    assert all(_close(b, a, 1e-4) for a, b in zip(ga, go))
    assert any(float(g.abs().max()) > 0 for g in go)


def test_cpu_gemm_option_refuses_an_unknown_kernel(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    result = invoke(cli, "train", "--model", tiny_model_dir("qwen2"), "--dataset", TOY, "--reward-mixer", MIXER,
                    "--no-progress", "--output-dir", out, "--cpu-gemm", "mkl")
    assert_one_line_error(result, "--cpu-gemm 'mkl' is not one of auto, onednn, aten")
    assert not out.exists()


def test_models_too_small_for_onednn_keep_aten_without_the_mode(tiny_model_dir):
    from rg_tracer.models import load_model

    model, tok = load_model(str(tiny_model_dir("qwen2")))  # hidden 32: every product is small
    assert not cpu_gemm.gains(model)
    assert not isinstance(HFPolicyAdapter(model, tok, cpu_gemm="aten").computing("cpu"), OneDNNLinears)
    if onednn_linear_works():
        assert not isinstance(HFPolicyAdapter(model, tok, cpu_gemm="onednn").computing("cpu"), OneDNNLinears)
        wide = torch.nn.Sequential(torch.nn.Linear(256, 256))
        assert cpu_gemm.gains(wide) and cpu_gemm.forward_gemm("onednn", wide) == "onednn"
        assert cpu_gemm.forward_gemm("onednn", model) == cpu_gemm.forward_gemm("aten", wide) == "aten"


def test_decode_layout_follows_the_kernel_choice(tiny_model_dir):
    from rg_tracer.models import load_model
    from rg_tracer.runtime.llama_step import default_layout

    model, _ = load_model(str(tiny_model_dir("qwen2")))
    weight = model.model.embed_tokens.weight
    assert default_layout(weight, "aten") == "copy"
    assert default_layout(weight, "onednn") == "onednn"
    assert default_layout(weight.bfloat16(), "onednn") == "copy"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # --dtype bfloat16 over float32 masters
        assert default_layout(weight, "onednn") == "copy"
    assert default_layout(weight.to("meta"), "onednn") == "views"


@needs_onednn
def test_strided_inputs_and_expanded_gradients(any_size):
    """A permuted input, a permuted upstream gradient and ``sum()``'s stride-0 one."""
    torch.manual_seed(3)
    w, b = torch.randn(3, 7, requires_grad=True), torch.randn(3, requires_grad=True)
    x = torch.randn(2, 5, 7).transpose(0, 1).requires_grad_()
    with OneDNNLinears():
        y = F.linear(x, w, b)
    g = torch.randn(3, 2, 5).permute(2, 1, 0)
    dx, dw, db = torch.autograd.grad(y, [x, w, b], g)
    assert _close(y, x @ w.t() + b) and _close(dx, g @ w)
    assert _close(dw, g.reshape(-1, 3).t() @ x.reshape(-1, 7)) and _close(db, g.sum((0, 1)))
    with OneDNNLinears():
        F.linear(x, w, b).sum().backward()
    assert _close(w.grad, torch.ones(10, 3).t() @ x.reshape(-1, 7)) and _close(b.grad, torch.full((3,), 10.0))


@pytest.mark.parametrize("choice", ["auto", "aten"])
def test_the_run_record_names_the_kernels(tmp_path, tiny_model_dir, choice):
    from rg_tracer.dapo.trainer import train

    trainer = train(config(tmp_path, tiny_model_dir("qwen2"), cpu_gemm=choice, max_steps=1, eval_every=0))
    run = read_log(trainer.run.log_path)[0]
    assert run["model"]["cpu_gemm"] == resolve_cpu_gemm(choice) and run["config"]["cpu_gemm"] == choice
