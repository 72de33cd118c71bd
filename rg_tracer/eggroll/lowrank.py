"""EGGROLL's low-rank perturbations, applied inside the forward and regenerated from seeds.

Sarkar et al. 2025 ("Evolution Strategies at the Hyperscale", arXiv 2511.16652). For a
weight ``W`` of shape (m, n) (``y = x Wᵀ``), population member ``i`` sees

    W_i = W + s_i · (σ/√r) · A_k B_kᵀ,   A_k ∈ R^{m×r}, B_k ∈ R^{n×r} standard normal,

where ``k`` is the member's noise draw and ``s_i = ±1``. With antithetic sampling
members ``2k`` and ``2k+1`` share draw ``k`` with signs ``+1, -1``. The forward never
forms ``A Bᵀ``: a hook adds ``s_i (σ/√r) (x B_k) A_kᵀ`` to the layer's output in place,
one ``bmm`` and one ``baddbmm_`` per layer for the whole population, so the extra memory
per member is O(r(m+n)) instead of the O(mn) of a perturbed copy.

How this departs from the paper (and why):

1. Only matrices are perturbed: every ``nn.Linear`` and GPT-2 ``Conv1D`` weight. Biases,
   norms and embeddings stay fixed, and a weight shared with another module (a tied
   ``lm_head``) is skipped, because the hook would perturb only one of its uses while
   the update would move both.
2. All draws of one layer come from one ``torch.Generator`` on the weight's device,
   seeded with ``mix_seed(seed, generation, layer)``: ``A = randn(K, m, r)`` then
   ``B = randn(K, n, r)``, draw ``k`` being slice ``k``. One kernel per layer instead of
   one generator per member and layer (which cost more than the forward on a GPU); the
   price is that a draw depends on the population size and on the device type (CPU and
   CUDA runs of one seed differ). Factors are regenerated for the update, not kept.
3. The update is ``W += lr · (1/N) Σ_i f_i · s_i (σ/√r) A_k B_kᵀ`` with shaped fitness
   ``f_i``: lr times the fitness-weighted mean of the perturbations the members saw.
   It equals ``lr·σ²·ĝ`` for the Gaussian-smoothing gradient estimate
   ``ĝ = 1/(Nσ) Σ f_i ε_i`` (``ε_i = s_i A_k B_kᵀ/√r``), so lr is dimensionless and the
   step is measured in units of σ (about ``lr·σ·std(f)/√N`` per weight).

Batch layout: a forward over the population stacks inputs member-major along the first
dimension (rows ``i·R .. (i+1)·R - 1`` belong to member ``i``; :func:`tile_members`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from rg_tracer.eggroll.config import check_population
from rg_tracer.errors import UserError
from rg_tracer.runtime.run import mix_seed

__all__ = [
    "Layer",
    "Population",
    "check_rank",
    "find_layers",
    "perturbed",
    "es_update",
    "dense_delta",
    "tile_members",
]

@dataclass(frozen=True)
class Layer:
    """One perturbed weight, seen as (m, n) = (out_features, in_features)."""

    name: str
    module: nn.Module
    out_features: int
    in_features: int
    transposed: bool  # GPT-2 Conv1D stores the weight as (n, m) and computes x W

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency, but the core works without it
        return ()
    return Conv1D


def find_layers(model: nn.Module) -> list[Layer]:
    """Every Linear/Conv1D weight of ``model`` in module order, tied weights excluded."""
    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    conv1d = _conv1d_class()
    layers = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or uses.get(id(weight), 0) != 1:
            continue
        if isinstance(module, nn.Linear):
            layers.append(Layer(name, module, module.out_features, module.in_features, False))
        elif conv1d and isinstance(module, conv1d):
            layers.append(Layer(name, module, weight.shape[1], weight.shape[0], True))
    return layers


def check_rank(layers: list[Layer], rank: int) -> None:
    """A rank above min(m, n) of some layer adds nothing but cost; refuse it."""
    if not layers:
        raise UserError("the model has no nn.Linear or Conv1D weight to perturb; EGGROLL needs matrix weights")
    smallest = min(layers, key=lambda l: min(l.out_features, l.in_features))
    limit = min(smallest.out_features, smallest.in_features)
    if rank > limit:
        raise UserError(
            f"--rank {rank} exceeds min(m, n) = {limit} of layer {smallest.name!r} "
            f"({smallest.out_features}×{smallest.in_features}); use --rank {limit} or less"
        )


@dataclass(frozen=True)
class Population:
    """The members of one generation; their perturbations are a function of these fields."""

    size: int
    rank: int
    sigma: float
    seed: int
    generation: int
    antithetic: bool = True

    def __post_init__(self) -> None:
        check_population(self.size, self.rank, self.sigma, self.antithetic)

    @property
    def group(self) -> int:
        """Members per noise draw: 2 (a mirrored pair) or 1."""
        return 2 if self.antithetic else 1

    @property
    def draws(self) -> int:
        return self.size // self.group

    def draw_of(self, member: int) -> int:
        return member // self.group

    def sign_of(self, member: int) -> int:
        return -1 if member % self.group else 1

    def signs(self) -> torch.Tensor:
        """(N,) ±1, member order."""
        return torch.tensor([float(self.sign_of(i)) for i in range(self.size)])

    def layer_seed(self, layer: int) -> int:
        return mix_seed(self.seed, self.generation, layer)

    def factors(self, layer_index: int, layer: Layer, draws: range | None = None):
        """``(A, B)`` of ``draws`` (default all), float32 on the weight's device: (K, m, r), (K, n, r)."""
        device = layer.weight.device
        gen = torch.Generator(device=device).manual_seed(self.layer_seed(layer_index))
        a = torch.randn(self.draws, layer.out_features, self.rank, generator=gen, device=device)
        b = torch.randn(self.draws, layer.in_features, self.rank, generator=gen, device=device)
        if draws is None:
            return a, b
        return a[draws.start:draws.stop], b[draws.start:draws.stop]

    @property
    def scale(self) -> float:
        return self.sigma / math.sqrt(self.rank)


def tile_members(batch: torch.Tensor, n_members: int) -> torch.Tensor:
    """Repeat a batch once per member, member-major: (R, ...) -> (N·R, ...)."""
    return batch.repeat(n_members, *([1] * (batch.dim() - 1)))


def _hook(a: torch.Tensor, b: torch.Tensor, signs: torch.Tensor, members: int):
    draws, group = a.shape[0], signs.numel()
    a_t = a.transpose(1, 2)  # (K, r, m)

    def hook(module, args, output):
        x = args[0]
        if x.shape[0] % members:
            raise ValueError(
                f"{type(module).__name__} got a batch of {x.shape[0]} rows, not a multiple of the "
                f"{members} perturbed members; stack inputs member-major (tile_members)"
            )
        dt = output.dtype  # x's own, or autocast's (--dtype) when the layer ran under it
        xk = x.reshape(draws, -1, x.shape[-1]).to(dt)  # (K, G·R·T, n): a draw's members are adjacent
        z = torch.bmm(xk, b.to(dt))  # (K, G·R·T, r)
        z = (z.view(draws, group, -1, z.shape[-1]) * signs.to(dt).view(1, group, 1, 1)).view_as(z)
        if output.is_contiguous():  # in place: no second (K·G·R·T, m) tensor (a quarter of the time on CPU)
            output.view(draws, -1, output.shape[-1]).baddbmm_(z, a_t.to(dt))  # (K, G·R·T, m) += z Aᵀ
            return output
        return torch.baddbmm(output.reshape(draws, -1, output.shape[-1]), z, a_t.to(dt)).view(output.shape)

    return hook


@contextmanager
def perturbed(layers: list[Layer], population: Population, members: range | None = None) -> Iterator[None]:
    """Within the block, a forward over ``members`` (default all) sees each member's weights.

    ``members`` must start and stop on a draw boundary (even numbers when antithetic), so
    a population too large for one forward is evaluated in several member batches (each
    regenerates the layer's draws and keeps its slice).
    """
    members = range(population.size) if members is None else members
    g = population.group
    if members.start % g or members.stop % g or members.step != 1 or not len(members):
        raise ValueError(f"member batch {members} must be a non-empty contiguous range aligned to {g}")
    draws = range(members.start // g, members.stop // g)
    signs = torch.tensor([1.0, -1.0][:g]) * population.scale
    handles = []
    try:
        for index, layer in enumerate(layers):
            a, b = population.factors(index, layer, draws)
            handles.append(layer.module.register_forward_hook(
                _hook(a, b, signs.to(a.device), len(members))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def dense_delta(layer: Layer, layer_index: int, population: Population, member: int) -> torch.Tensor:
    """Member ``member``'s perturbation ``s (σ/√r) A Bᵀ`` as a dense (m, n) matrix (tests, baselines)."""
    k = population.draw_of(member)
    a, b = population.factors(layer_index, layer, range(k, k + 1))
    return population.sign_of(member) * population.scale * (a[0] @ b[0].T)


@torch.no_grad()
def es_update(layers: list[Layer], population: Population, fitness, lr: float) -> float:
    """``W += lr · (1/N) Σ_i f_i s_i (σ/√r) A_k B_kᵀ`` for every layer; return the step's L2 norm.

    ``fitness`` holds the shaped fitness of members 0..N-1. Members sharing a draw are
    summed first (``Σ_i s_i f_i`` per draw), then one (m, K·r) @ (K·r, n) product per
    layer forms the whole update: no per-member (m, n) matrix exists at any point.
    """
    f = torch.as_tensor(fitness, dtype=torch.float32).flatten()
    if f.numel() != population.size:
        raise ValueError(f"got {f.numel()} fitness values for a population of {population.size}")
    per_draw = (f * population.signs()).view(population.draws, population.group).sum(1)  # (K,)
    coef = lr * population.scale / population.size
    total = 0.0
    for index, layer in enumerate(layers):
        weight = layer.weight
        a, b = population.factors(index, layer)  # (K, m, r), (K, n, r)
        m, n = layer.out_features, layer.in_features
        a_cat = (a * per_draw.to(a.device).view(-1, 1, 1)).permute(1, 0, 2).reshape(m, -1)  # (m, K·r)
        b_cat = b.permute(1, 0, 2).reshape(n, -1)  # (n, K·r)
        delta = coef * (a_cat @ b_cat.T)  # (m, n)
        weight.add_((delta.T if layer.transposed else delta).to(weight.dtype))
        total += float(delta.pow(2).sum())
    return math.sqrt(total)
