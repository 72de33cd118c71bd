"""The policy objective around upstream's loss: advantages, DAPO clipping, sample weights.

``DAPOTrainer.train_step`` computes ``-(clamp(r, 1-eps, 1+eps) * A).mean()`` with one
symmetric ``eps`` and every sample weighted equally. DAPO wants an asymmetric range
``[1-eps_low, 1+eps_high]`` (clip-higher) and zero weight for truncated completions
(overlong filtering). Upstream's only hook is ``extra_loss``, so we pass the difference

    extra = -(w * clamp(r, 1-eps_low, 1+eps_high) * A).mean() - upstream_policy_loss

computed on the same ``logp`` tensor (same graph) and the same advantages, which we
recompute with upstream's own mixer and its group normalisation. The total is then
exactly the DAPO objective; with symmetric clipping and no masks the correction is
``None`` and nothing is added.
"""

from __future__ import annotations

import torch
from gepa_dapo_grn.reward_mixers import mix_reward_vectors

__all__ = ["mixed_rewards", "group_advantages", "zero_variance_groups", "policy_loss", "loss_correction",
           "clip_fraction"]


def mixed_rewards(feedbacks, mixer) -> torch.Tensor:
    """The scalar reward upstream trains on, one per sample, (N,)."""
    scalar, _ = mix_reward_vectors([fb.rewards for fb in feedbacks], mixer)
    return scalar


def group_advantages(scalar: torch.Tensor, group_size: int, clip: float) -> torch.Tensor:
    """Upstream's advantages for a value-free policy: z-score per consecutive group, clipped."""
    grouped = scalar.view(-1, group_size)  # (B, G)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, unbiased=False).clamp_min(1e-6)
    return ((grouped - mean) / std).view(-1).clamp(-clip, clip)


def zero_variance_groups(scalar: torch.Tensor, group_size: int) -> torch.Tensor:
    """Boolean (B,): groups whose samples all got the same reward carry no learning signal."""
    return scalar.view(-1, group_size).std(dim=1, unbiased=False) < 1e-8


def clip_fraction(ratio: torch.Tensor, eps_low: float, eps_high: float) -> float:
    """Fraction of samples whose ratio left ``[1 - eps_low, 1 + eps_high]``."""
    return ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).float().mean().item()


def policy_loss(logp, logp_old, advantages, eps_low: float, eps_high: float, weights=None) -> torch.Tensor:
    ratio = torch.exp(logp - logp_old)
    terms = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    if weights is not None:
        terms = terms * weights
    return -terms.mean()


def loss_correction(logp, logp_old, advantages, *, upstream_eps: float, eps_low: float,
                    eps_high: float, weights=None):
    """``extra_loss`` turning upstream's symmetric, unweighted loss into ours; ``None`` if equal."""
    if eps_low == upstream_eps and eps_high == upstream_eps and weights is None:
        return None
    ours = policy_loss(logp, logp_old, advantages, eps_low, eps_high, weights)
    return ours - policy_loss(logp, logp_old, advantages, upstream_eps, upstream_eps)
