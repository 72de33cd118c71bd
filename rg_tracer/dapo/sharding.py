"""A DAPO step split over the processes of a ``torchrun`` run, and put back together for the log.

Each process samples, scores and trains on a contiguous share of the step's prompts, whole
groups only (upstream z-scores each consecutive group of ``group_size``); DDP averages the
gradients, so with equal shares the update is the full batch's. The log is written by rank 0
and holds the *whole* step: :func:`merge_step` gathers every rank's samples to rank 0 in rank
order (= the global prompt order a one-process run logs) and recomputes the batch statistics
on the merged batch; other numbers are averaged over ranks (counts summed, rounds and timings
maxed). ``dist/world_size`` and ``dist/grad_norm_spread`` (0 when the gradients were averaged:
a cheap desynchronisation alarm) are added. One gather per step, to rank 0 only.
"""

from __future__ import annotations

import torch
from gepa_dapo_grn.reward_mixers import mix_reward_vectors

from rg_tracer.dapo.objective import zero_variance_groups

__all__ = ["merge_step", "sft_share"]

_SUMMED = ("groups_sampled", "groups_kept")
_MAXED = ("sampling_rounds",)


def sft_share(dist, examples: list) -> list:
    """This rank's supervised examples: an equal share when they divide evenly (DDP's average
    is then the full batch's mean), else all of them on every rank (the same gradient twice)."""
    return dist.shard(examples) if dist.active and len(examples) % dist.world_size == 0 else examples


def batch_statistics(scalar: torch.Tensor, generation: list[dict], group_size: int) -> dict:
    """The ``rl`` numbers that describe the batch itself: from its mixed rewards ``scalar`` and
    its logged ``generation`` rows."""
    lengths = torch.tensor([g["completion_tokens"] for g in generation], dtype=torch.float32)
    return {
        "reward_mixed_mean": scalar.mean().item(), "reward_mixed_std": scalar.std(unbiased=False).item(),
        "zero_std_group_frac": zero_variance_groups(scalar, group_size).float().mean().item(),
        "completion_length_mean": lengths.mean().item(), "completion_length_min": lengths.min().item(),
        "completion_length_max": lengths.max().item(),
        "truncated_frac": sum(g["truncated"] for g in generation) / len(generation),
    }


def _combine(name: str, values: list):
    if any(v is None for v in values):
        return None
    if name in _SUMMED:
        return sum(values)
    if name in _MAXED:
        return max(values)
    return sum(values) / len(values)


def _timing(name: str, values: list):
    """A timing field over ranks: throughput adds up; seconds and memory peaks take the slowest
    or largest rank; a rank that could not measure makes it null."""
    if any(v is None for v in values):
        return None
    return sum(values) if name == "tokens_per_s" else max(values)


def merge_step(dist, mixer, group_size: int, payload: dict) -> dict:
    """The whole step's ``payload`` (``gepa``, ``generation``, ``rl``, ``timing``) on rank 0;
    this rank's own elsewhere (it writes nothing). Unchanged in one process."""
    parts = dist.gather_to_main(payload)
    if not dist.active or parts is None:
        return payload
    gepa = [s for p in parts for s in p["gepa"]]
    generation = [g for p in parts for g in p["generation"]]
    rl = {name: _combine(name, [p["rl"].get(name) for p in parts]) for name in parts[0]["rl"]}
    if gepa:
        scalar, _ = mix_reward_vectors([s["rewards"] for s in gepa], mixer)
        rl.update(batch_statistics(scalar, generation, group_size))
    norms = [p["rl"]["grad_norm"] for p in parts]
    rl["dist/world_size"] = dist.world_size
    rl["dist/grad_norm_spread"] = max(norms) - min(norms)
    timing = {k: _timing(k, [p["timing"].get(k) for p in parts]) for k in parts[0]["timing"]}
    return {"gepa": gepa, "generation": generation, "rl": rl, "timing": timing}
