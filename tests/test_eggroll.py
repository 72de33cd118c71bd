"""EGGROLL math by hand: low-rank forward, antithetic pairs, seeds, the update, shaping, search."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.eggroll import Population, dense_delta, es_update, find_layers, perturbed, tile_members
from rg_tracer.eggroll.lowrank import check_rank
from rg_tracer.eggroll.search import es_step
from rg_tracer.eggroll.shaping import centered_rank, no_shaping, shape_fitness, zscore
from rg_tracer.errors import UserError
from rg_tracer.models import load_model


class FixedFactors(Population):
    """A population whose factors are given, for hand-computed cases."""

    def __init__(self, factors, **kw):
        super().__init__(**kw)
        object.__setattr__(self, "_given", factors)

    def factors(self, layer_index, layer, draws=None):
        a, b = self._given[layer_index]
        draws = draws or range(self.draws)
        return a[draws.start:draws.stop], b[draws.start:draws.stop]


def identity_layer():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
    return lin


def test_perturbed_forward_by_hand():
    # W = I, A = [1, 2]ᵀ, B = [3, 4]ᵀ, σ = 2, r = 1: member 0 sees W + 2·ABᵀ, member 1 sees W - 2·ABᵀ.
    lin = identity_layer()
    a, b = torch.tensor([[[1.0], [2.0]]]), torch.tensor([[[3.0], [4.0]]])
    pop = FixedFactors([(a, b)], size=2, rank=1, sigma=2.0, seed=0, generation=0)
    x = torch.tensor([[1.0, 2.0]])
    with torch.no_grad(), perturbed(find_layers(lin), pop):
        y = lin(tile_members(x, 2))
    # x·B = 1·3 + 2·4 = 11;  y = x ± 2·11·Aᵀ = [1, 2] ± [22, 44]
    assert y.tolist() == [[23.0, 46.0], [-21.0, -42.0]]
    assert torch.equal(lin(x), x)  # hooks removed afterwards


def test_lowrank_forward_equals_dense_weights_for_every_member():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    layers = find_layers(net)
    pop = Population(6, 2, 0.3, seed=1, generation=4)
    x = torch.randn(4, 5)
    with torch.no_grad(), perturbed(layers, pop):
        y = net(tile_members(x, 6)).view(6, 4, 3)  # (N, R, out)
    for i in range(6):
        dense = copy.deepcopy(net)
        with torch.no_grad():
            for j, layer in enumerate(find_layers(dense)):
                a, b = pop.factors(j, layers[j])
                k = i // 2
                expected = (1 if i % 2 == 0 else -1) * 0.3 / 2**0.5 * a[k] @ b[k].T  # σ/√r · A Bᵀ
                torch.testing.assert_close(dense_delta(layers[j], j, pop, i), expected)
                layer.weight.add_(expected)
            torch.testing.assert_close(y[i], dense(x), rtol=1e-5, atol=1e-6)


def test_member_batches_see_the_same_members():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    layers, pop, x = find_layers(net), Population(8, 1, 0.1, 0, 1), torch.randn(3, 5)
    with torch.no_grad():
        with perturbed(layers, pop):
            whole = net(tile_members(x, 8))
        with perturbed(layers, pop, range(4, 6)):
            part = net(tile_members(x, 2))
    torch.testing.assert_close(part, whole[12:18])
    with pytest.raises(ValueError, match="aligned to 2"):
        with perturbed(layers, pop, range(3, 5)):
            pass


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_hf_logits_and_generation_match_a_dense_copy(tiny_model_dir, arch):
    model, tok = load_model(str(tiny_model_dir(arch)))
    model.eval()
    layers = find_layers(model)
    kinds = {type(l.module).__name__ for l in layers}
    assert kinds == ({"Conv1D"} if arch == "gpt2" else {"Linear"})  # tied lm_head skipped
    assert all("lm_head" not in l.name for l in layers)
    pop = Population(4, 2, 0.5, seed=3, generation=1)
    enc = tok(["1+2=", "33+4="], return_tensors="pt", padding=True, add_special_tokens=False)
    args = dict(max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        with perturbed(layers, pop):
            logits = model(input_ids=tile_members(enc["input_ids"], 4),
                           attention_mask=tile_members(enc["attention_mask"], 4)).logits.view(4, 2, -1, len(tok))
            generated = model.generate(input_ids=tile_members(enc["input_ids"], 4),
                                       attention_mask=tile_members(enc["attention_mask"], 4), **args).view(4, 2, -1)
            # the trainer's sampler (its own decode loop) must see the hooks too
            sampled = HFPolicyAdapter(model, tok).sample(["1+2=", "33+4="] * 4, 1, 6, greedy=True).completions
        for member in (0, 3):
            dense = copy.deepcopy(model)
            for j, layer in enumerate(find_layers(dense)):
                delta = dense_delta(layers[j], j, pop, member)
                layer.weight.add_(delta.T if layer.transposed else delta)
            torch.testing.assert_close(logits[member], dense(**enc).logits, rtol=1e-4, atol=1e-4)
            assert torch.equal(generated[member], dense.generate(**enc, **args))
            dense_sampled = HFPolicyAdapter(dense, tok).sample(["1+2=", "33+4="], 1, 6, greedy=True).completions
            assert sampled[2 * member:2 * member + 2] == dense_sampled


def test_antithetic_members_cancel():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4, bias=False)
    layers, pop = find_layers(lin), Population(8, 3, 0.2, seed=5, generation=2)
    for k in range(4):
        torch.testing.assert_close(dense_delta(layers[0], 0, pop, 2 * k) + dense_delta(layers[0], 0, pop, 2 * k + 1),
                                   torch.zeros(4, 6))
    x = torch.randn(2, 6)
    with torch.no_grad(), perturbed(layers, pop):
        y = lin(tile_members(x, 8)).view(4, 2, 2, 4)  # (pair, ±, R, out); linear, so the pair mean is W x
    torch.testing.assert_close(y.mean(1), lin(x).detach().expand(4, 2, 4), rtol=1e-5, atol=1e-6)
    before = lin.weight.detach().clone()
    norm = es_update(layers, pop, [0.7, 0.7, -1.0, -1.0, 0.0, 0.0, 3.0, 3.0], lr=5.0)  # equal fitness per pair
    assert norm == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(lin.weight.detach(), before)


def test_regenerating_from_the_seed_gives_identical_perturbations():
    lin = nn.Linear(5, 3)
    layer = find_layers(lin)[0]
    first = Population(4, 2, 0.1, seed=11, generation=7).factors(0, layer)
    again = Population(4, 2, 0.1, seed=11, generation=7).factors(0, layer)
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    assert not torch.equal(first[0], Population(4, 2, 0.1, seed=11, generation=8).factors(0, layer)[0])
    assert not torch.equal(first[0], Population(4, 2, 0.1, seed=12, generation=7).factors(0, layer)[0])
    assert not torch.equal(first[0], Population(4, 2, 0.1, seed=11, generation=7).factors(1, layer)[0])
    assert first[0].shape == (2, 3, 2) and first[1].shape == (2, 5, 2)  # (K, m, r), (K, n, r)


def test_update_equals_the_formula_by_hand():
    # One pair, W = I (2×2), A = [1, 0]ᵀ, B = [0, 1]ᵀ, σ = 0.5, r = 1, fitness (+: 3, -: 1), lr = 2, N = 2:
    # W += lr/N · (3·σ·ABᵀ - 1·σ·ABᵀ) = 1 · 2 · 0.5 · [[0, 1], [0, 0]] = [[0, 1], [0, 0]]
    lin = identity_layer()
    a, b = torch.tensor([[[1.0], [0.0]]]), torch.tensor([[[0.0], [1.0]]])
    pop = FixedFactors([(a, b)], size=2, rank=1, sigma=0.5, seed=0, generation=0)
    norm = es_update(find_layers(lin), pop, [3.0, 1.0], lr=2.0)
    assert lin.weight.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert norm == pytest.approx(1.0)


def test_update_equals_the_formula_on_random_factors():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))
    layers = find_layers(net)
    pop = Population(6, 2, 0.3, seed=2, generation=3, antithetic=False)
    fitness = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5, -0.5])
    expected = [l.weight.detach().clone() + 0.7 / 6 * sum(
        fitness[i] * dense_delta(l, j, pop, i) for i in range(6)) for j, l in enumerate(layers)]
    es_update(layers, pop, fitness, lr=0.7)
    for layer, want in zip(layers, expected):
        torch.testing.assert_close(layer.weight.detach(), want, rtol=1e-5, atol=1e-6)


def test_shaping_by_hand():
    assert centered_rank([3.0, 1.0, 2.0]).tolist() == [0.5, -0.5, 0.0]
    assert centered_rank([1.0, 1.0, 2.0]).tolist() == [-0.25, -0.25, 0.5]  # ties share their mean rank
    assert centered_rank([4.0]).tolist() == [0.0]
    np.testing.assert_allclose(zscore([1.0, 2.0, 3.0]), [-1.224744871, 0.0, 1.224744871])
    assert zscore([2.0, 2.0]).tolist() == [0.0, 0.0]
    assert no_shaping([1, -2]).tolist() == [1.0, -2.0]
    with pytest.raises(UserError, match="choose one of none, zscore, centered_rank"):
        shape_fitness([1.0], "rank")


@pytest.mark.parametrize("kwargs, message", [
    (dict(size=7, rank=1, sigma=0.1), "odd.*use an even number such as 8"),
    (dict(size=8, rank=1, sigma=0.0), "--sigma 0.0 must be a finite number > 0"),
    (dict(size=8, rank=1, sigma=-1.0), "--sigma -1.0 must be"),
    (dict(size=8, rank=0, sigma=0.1), "--rank 0 must be an integer >= 1"),
])
def test_population_refuses_bad_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        Population(seed=0, generation=0, **kwargs)


def test_rank_above_min_dimension_is_refused():
    layers = find_layers(nn.Sequential(nn.Linear(8, 3), nn.Linear(3, 8)))
    check_rank(layers, 3)
    with pytest.raises(UserError, match=r"--rank 4 exceeds min\(m, n\) = 3 of layer '0'.*use --rank 3"):
        check_rank(layers, 4)


def test_short_search_improves_a_toy_objective():
    """An MLP whose fitness is minus its squared distance to fixed targets."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    layers, x, target = find_layers(net), torch.randn(8, 4), torch.randn(8, 2)

    def fitness(pop):
        with torch.no_grad(), perturbed(layers, pop):
            out = net(tile_members(x, pop.size)).view(pop.size, 8, 2)
        return -((out - target) ** 2).mean(dim=(1, 2))

    history = [float(es_step(layers, Population(32, 2, 0.1, 0, g), fitness, lr=1.0, shaping="centered_rank")[0].mean())
               for g in range(60)]
    assert np.mean(history[-10:]) > np.mean(history[:10]) + 0.2 * abs(np.mean(history[:10]))


def test_short_search_raises_a_tiny_lms_probability_of_a_token(tiny_model_dir):
    """A tiny causal LM; fitness = mean log-prob of '7' after each prompt."""
    model, tok = load_model(str(tiny_model_dir("qwen2")))
    model.eval().requires_grad_(False)
    layers = find_layers(model)
    enc = tok(["1+6=", "2+5=", "3+4="], return_tensors="pt", padding=True, add_special_tokens=False)
    seven = tok.convert_tokens_to_ids("7")

    def fitness(pop):
        with torch.no_grad(), perturbed(layers, pop):
            logits = model(input_ids=tile_members(enc["input_ids"], pop.size),
                           attention_mask=tile_members(enc["attention_mask"], pop.size)).logits[:, -1]
        return torch.log_softmax(logits, -1)[:, seven].view(pop.size, -1).mean(1)

    mean_model = Population(2, 1, 1e-12, 0, 0)  # a pair at σ ≈ 0: both members are the unperturbed model
    before = float(fitness(mean_model)[0])
    history = [float(es_step(layers, Population(16, 1, 0.05, 0, g), fitness, lr=10.0, shaping="centered_rank")[0].mean())
               for g in range(30)]
    after = float(fitness(mean_model)[0])
    # The tied, norm-scaled head of this 1-layer model caps the log-prob near -4; from about -4.4:
    assert after > before + 0.25 and np.mean(history[-5:]) > np.mean(history[:5]) + 0.25
