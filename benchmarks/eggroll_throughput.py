"""EGGROLL member evaluations per second: ours vs. a naive full-rank baseline vs. torcheggroll.

One ES generation = perturb every Linear weight for N members, evaluate each member,
compute one fitness per member, update the weights. Two workloads, on the same locally
built tiny Qwen2, with the same N, r, σ, side by side in this process:

* ``generate``  each member greedily completes P prompts with G new tokens (what
  ``rg-tracer eggroll`` does); fitness = mean of the generated token ids (any function
  of the outputs would do).
* ``forward``   each member scores a P×T token batch in one forward; fitness = mean
  log-prob of one token at the last position.

Methods:

* ``eggroll``       rg_tracer.eggroll: the whole population in one forward / one
  ``generate`` over N·P rows, perturbation ``(x B) Aᵀ`` added in forward hooks, update
  from regenerated factors.
* ``naive``         one scratch copy of the model; per member, write ``W + σ/√r·A Bᵀ``
  (materialised, full rank) into it and evaluate the member's P rows; update from
  regenerated dense deltas.
* ``torcheggroll``  PyPI package, ``TorchEggrollES.step`` (vmap over ``functional_call``
  with materialised (N, m, n) noise); forward workload only, as ``generate`` cannot run
  under vmap.

Run:  .venv/bin/python benchmarks/eggroll_throughput.py [--hidden 64 --layers 2 --population 64 --device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rg_tracer.eggroll import Population, es_update, find_layers, perturbed, tile_members  # noqa: E402
from rg_tracer.models import TinyModelSpec, init_model, load_model, quiet_transformers  # noqa: E402

TARGET = 5  # forward fitness: mean log-prob of this token id at the last position


def evaluate(model, ids, mask, members: int, workload: str, new_tokens: int, pad: int) -> torch.Tensor:
    """Fitness of ``members`` members whose rows are stacked member-major in ``ids``: (members,)."""
    if workload == "forward":
        logits = model(input_ids=ids, use_cache=False).logits
        return torch.log_softmax(logits[:, -1].float(), dim=-1)[:, TARGET].view(members, -1).mean(1)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=pad)
    return out[:, ids.shape[1]:].float().view(members, -1).mean(1)


def eggroll_generation(model, layers, batch, pop: Population, lr: float, **kw) -> None:
    ids, mask = batch
    with torch.no_grad(), perturbed(layers, pop):
        fit = evaluate(model, tile_members(ids, pop.size), tile_members(mask, pop.size), pop.size, **kw)
    es_update(layers, pop, (fit - fit.mean()).cpu(), lr)


def naive_generation(model, scratch, layers, scratch_layers, batch, pop: Population, lr: float, **kw) -> None:
    ids, mask = batch
    fit = torch.empty(pop.size)
    with torch.no_grad():
        factors = [pop.factors(j, layer) for j, layer in enumerate(layers)]  # same draws as eggroll's

        def delta(j: int, i: int) -> torch.Tensor:  # (m, n): member i's full-rank perturbation of layer j
            a, b = factors[j][0][pop.draw_of(i)], factors[j][1][pop.draw_of(i)]
            d = pop.sign_of(i) * pop.scale * (a @ b.T)
            return d.T if layers[j].transposed else d

        for i in range(pop.size):
            for j, (layer, copy_layer) in enumerate(zip(layers, scratch_layers)):
                copy_layer.weight.copy_(layer.weight + delta(j, i))
            fit[i] = evaluate(scratch, ids, mask, 1, **kw)[0]
        shaped = fit - fit.mean()
        for j, layer in enumerate(layers):
            layer.weight.add_(sum(float(shaped[i]) * delta(j, i) for i in range(pop.size)) * (lr / pop.size))


def timed(fn, repeats: int, device: torch.device) -> float:
    fn(0)  # warm-up
    times = []
    for k in range(1, repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torcheggroll_rate(model, layers, ids, args, sigma, lr, device) -> float | str:
    try:
        from torcheggroll import TorchEggrollES
    except ImportError:
        return "not installed (pip install torcheggroll)"
    wrapped = _Logits(model).requires_grad_(True)  # torcheggroll evolves only trainable params
    names = {f"m.{l.name}.weight" for l in layers}
    es = TorchEggrollES(wrapped, pop_size=args.population, sigma=sigma, lr=lr, rank=args.rank, device=device,
                        param_filter=lambda p, name: name in names, normalize_fitness=False)
    loss = lambda out, _t: -torch.log_softmax(out[:, -1].float(), -1)[:, TARGET].mean()  # noqa: E731
    try:
        return args.population / timed(lambda k: es.step(ids, loss, ids), args.repeats, device)
    except Exception as exc:  # report, don't hide, a package that fails here
        return f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    finally:
        model.requires_grad_(False)


class _Logits(torch.nn.Module):
    """``model(input_ids) -> logits`` for torcheggroll's ``functional_call``."""

    def __init__(self, model) -> None:
        super().__init__()
        self.m = model

    def forward(self, ids):
        return self.m(input_ids=ids, use_cache=False).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8, help="P rows per member")
    parser.add_argument("--tokens", type=int, default=16, help="T prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=8, help="G generated tokens per row (generate workload)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    device, sigma, lr, n = torch.device(args.device), 0.05, 1.0, args.population

    with tempfile.TemporaryDirectory() as tmp:
        init_model(Path(tmp) / "m", TinyModelSpec(arch="qwen2", layers=args.layers, hidden=args.hidden, heads=4))
        model, tok = load_model(str(Path(tmp) / "m"))
    model.to(device).eval().requires_grad_(False)
    layers = find_layers(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 40, (args.prompts, args.tokens), generator=gen).to(device)
    batch = (ids, torch.ones_like(ids))
    pop = lambda k: Population(n, args.rank, sigma, seed=0, generation=k)  # noqa: E731
    scratch = copy.deepcopy(model)
    scratch_layers = find_layers(scratch)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: qwen2 layers={args.layers} hidden={args.hidden} ({params:,} params, {len(layers)} perturbed "
          f"Linear weights); N={n} r={args.rank} P={args.prompts} T={args.tokens} G={args.new_tokens}; "
          f"device={device} threads={args.threads}")

    rates: dict[tuple[str, str], float | str] = {}
    for workload in ("generate", "forward"):
        kw = dict(workload=workload, new_tokens=args.new_tokens, pad=tok.pad_token_id)
        rates[workload, "eggroll"] = n / timed(
            lambda k: eggroll_generation(model, layers, batch, pop(k), lr, **kw), args.repeats, device)
        rates[workload, "naive"] = n / timed(
            lambda k: naive_generation(model, scratch, layers, scratch_layers, batch, pop(k), lr, **kw),
            args.repeats, device)
    rates["generate", "torcheggroll"] = "n/a (generate cannot run under vmap)"
    rates["forward", "torcheggroll"] = torcheggroll_rate(model, layers, ids, args, sigma, lr, device)

    ours_floats = sum(args.rank * (l.out_features + l.in_features) for l in layers)
    dense_floats = sum(l.out_features * l.in_features for l in layers)
    memory = {"eggroll": ours_floats * 4, "naive": dense_floats * 4, "torcheggroll": 2 * dense_floats * 4}
    print(f"\n{'workload':<10}{'method':<14}{'member evals/s':>16}{'eggroll ÷ it':>14}{'perturbation bytes/member':>28}")
    for (workload, method), rate in rates.items():
        if isinstance(rate, str):
            print(f"{workload:<10}{method:<14}  {rate}")
            continue
        ratio = rates[workload, "eggroll"] / rate
        print(f"{workload:<10}{method:<14}{rate:>16,.1f}{ratio:>13.1f}×{memory[method]:>28,}")
    for workload in ("generate", "forward"):
        print(f"speed-up over naive ({workload}): {rates[workload, 'eggroll'] / rates[workload, 'naive']:.1f}×"
              + ("  (target >= 3×)" if workload == "generate" else ""))
    print(f"perturbation memory per member: r(m+n) = {ours_floats:,} floats (eggroll; a mirrored pair shares it) "
          f"vs mn = {dense_floats:,} (naive full-rank copy; torcheggroll keeps noise and perturbed weights: 2·mn)")


if __name__ == "__main__":
    main()
