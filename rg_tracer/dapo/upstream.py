"""Every workaround for upstream ``gepa_dapo_grn`` (0.4.x) in one place, each with the trap it
answers (numbers refer to ``docs/notes/gepa-dapo-grn.md``). Delete an entry when upstream
fixes its trap.

1. :class:`StableSafety` — ``SafetyController.adjust_configs`` resets ``kl_coeff`` and
   ``clip_ratio`` to their first-seen values every step, so adaptive KL never acts (trap 5);
   this controller keeps the values the trainer (and its adaptive KL) set.
2. :class:`NoReference` — with ``--kl-coef 0`` upstream would still clone the policy and run a
   reference forward every step (trap 8); this stands in for the reference at zero cost.
   ``DAPOTrainer.__init__`` clones the policy whatever comes next, so when the reference is
   given (``NoReference``, a resume's original model, ``--lora``'s adapters-off base) it is
   handed over in place of that clone: no transient copy of the model.
3. :func:`dapo_trainer` builds ``DAPOTrainer`` with ``max_grad_norm=inf``: upstream clips
   inside ``train_step`` and drops the norm, so :class:`~rg_tracer.dapo.optim.ClippingOptimizer`
   clips instead and records the pre-clip norm.
4. :func:`upstream_metrics` keeps upstream's own metrics under ``upstream/``, less the exact
   duplicates of rg-tracer's (among them ``kl/value``, which upstream reports as
   ``mean(logp - 0)`` when there is no reference).
5. The clip-higher/overlong correction through ``extra_loss`` (upstream has one symmetric
   ``eps`` and no sample weights) lives with the objective: ``rg_tracer.dapo.objective``.
6. :class:`_DeviceSafeTrainer` — upstream mixes rewards into a CPU tensor and multiplies
   them by the log-probs: on CUDA a device mismatch at step 1. The advantages follow the
   log-probs' device.
7. Under torchrun each process's ``train_step`` sees only its share of the batch:
   :class:`GlobalTrackers` feeds upstream's curriculum and safety trackers the whole step's
   feedback, in global order, on every rank, and :func:`synchronise` averages the KL over
   ranks before the adaptive-KL update, so ``kl_coeff`` and the trackers stay identical
   everywhere (and equal to a one-process run's).
8. :class:`_DeviceSafeTrainer` — ``train_step`` ends with ``clip_grad_norm_(policy.parameters(),
   max_grad_norm)``; with ``max_grad_norm=inf`` (item 3) that is a no-op that still measures
   the gradients' norm and multiplies every gradient by 1 (two passes over them: 3-4 ms of a
   0.46 s step of the 4.2M-parameter model in ``benchmarks/cli_vs_trl.py``). The policy shows
   upstream no parameters during ``train_step`` (upstream reads them nowhere else), so the clip
   has nothing to do; :class:`~rg_tracer.dapo.optim.ClippingOptimizer` measures and clips once.
"""

from __future__ import annotations

import math

import torch
from gepa_dapo_grn import DAPOConfig, DAPOTrainer, SafetyController

from rg_tracer.schema import UPSTREAM_PREFIX

__all__ = ["StableSafety", "NoReference", "dapo_trainer", "upstream_metrics", "GlobalTrackers", "synchronise"]



class StableSafety(SafetyController):
    """Keeps the KL weight and clip ratio we set; upstream resets them every step."""

    def adjust_configs(self, dapo_config, grn_config) -> None:
        self.adjust_grn_config(grn_config)


def _no_parameters(recurse: bool = True):
    return iter(())


class NoReference:
    """Stands in for the KL reference when ``--kl-coef 0``: no model copy, no forward."""

    def logprobs(self, actions: torch.Tensor, **inputs) -> torch.Tensor:
        return torch.zeros(actions.shape[0], device=actions.device)


class _DeviceSafeTrainer(DAPOTrainer):
    def train_step(self, *args, **kwargs):
        """Upstream's step, with the policy's parameters hidden from it (item 8)."""
        self.policy.parameters = _no_parameters
        try:
            return super().train_step(*args, **kwargs)
        finally:
            del self.policy.parameters

    def _compute_policy_loss(self, logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor):
        return super()._compute_policy_loss(logp_new, logp_old, advantages.to(logp_new.device))


def dapo_trainer(policy, optimizer, config, mixer, reference=None) -> DAPOTrainer:
    """Upstream's trainer for ``config`` (a ``TrainConfig``) with the workarounds above; the KL
    reference is ``reference`` (a policy), or :class:`NoReference` when ``--kl-coef 0``."""
    dapo_config = DAPOConfig(
        clip_ratio=config.clip_ratio, clip_advantage=config.clip_advantage, kl_coeff=config.kl_coef,
        target_kl=config.kl_target or 0.0, kl_horizon=config.kl_horizon,
        adaptive_kl=config.kl_target is not None, max_grad_norm=math.inf, group_size=config.group_size,
    )
    given = NoReference() if config.kl_coef == 0 else reference
    if given is not None:  # upstream's __init__ clones the policy unconditionally: no copy when it is not needed
        policy.clone = lambda: given
    try:
        trainer = _DeviceSafeTrainer(policy, optimizer, config=dapo_config, reward_mixer=mixer,
                                     safety_controller=StableSafety())
    finally:
        if given is not None:
            del policy.clone
    return trainer


#: upstream metrics that repeat one of rg-tracer's own numbers exactly
_DUPLICATES = ("loss/total", "kl/value", "reward/mean", "reward/std", "reward_scalar/mean", "reward_scalar/std")


def upstream_metrics(metrics: dict) -> dict:
    """Upstream's ``train_step`` metrics under :data:`UPSTREAM_PREFIX`, less those rg-tracer
    logs under its own name: ``loss/total`` is ``loss``, ``kl/value`` is ``kl`` (which is null
    without a reference, where upstream reports ``mean(logp - 0)``), ``reward/*`` and
    ``reward_scalar/*`` are ``reward_mixed_mean/std``. What stays differs from rg-tracer's
    same-looking numbers: ``loss/policy`` is upstream's loss before the clip-higher/overlong
    correction, ``kl/coeff`` the KL weight after the adaptive update (``kl_coeff``: the one
    this step used)."""
    return {UPSTREAM_PREFIX + k: v for k, v in metrics.items() if k not in _DUPLICATES}


class GlobalTrackers:
    """Upstream's curriculum and safety trackers, updated from the whole step's feedback.

    ``train_step`` updates both from the feedbacks it is given: under torchrun, one rank's
    share. Installed, upstream's per-call updates become no-ops and :meth:`update` applies
    the gathered feedbacks (all ranks, global order) before each ``train_step`` call, as one
    process would have."""

    def __init__(self, dapo: DAPOTrainer) -> None:
        self._curriculum, self._safety = dapo.curriculum.update, dapo.safety_controller.update
        dapo.curriculum.update = lambda *args, **kwargs: None
        dapo.safety_controller.update = lambda *args, **kwargs: None

    def update(self, feedbacks: list) -> None:
        for feedback in feedbacks:
            self._curriculum(feedback.meta.get("task_id", "default"), feedback)
            self._safety(feedback)


def synchronise(dapo: DAPOTrainer, dist) -> GlobalTrackers | None:
    """Under torchrun: the adaptive-KL update reads the KL averaged over ranks, and the trackers
    are :class:`GlobalTrackers` (returned). In one process nothing changes (``None``)."""
    if not dist.active:
        return None
    if dapo.config.adaptive_kl:  # otherwise upstream's update returns at once: no collective needed
        update_kl = dapo._update_kl_coeff
        dapo._update_kl_coeff = lambda kl_value: update_kl(dist.mean(kl_value))
    return GlobalTrackers(dapo)
