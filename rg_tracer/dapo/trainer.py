"""The training loop: sample -> score -> feedback -> train step -> log -> eval -> checkpoint.

Run it with ``rg-tracer train --model M --dataset D`` (or ``scripts/train_dapo_hybrid.py``).
How it departs from a textbook DAPO/GRPO loop, because of the upstream ``DAPOTrainer``:

1. The loss is upstream's ``-(clamp(r, 1-eps, 1+eps) * A).mean()`` (no PPO ``min``), with
   the mixed scalar of the reward vector z-scored within each group of ``group_size``.
   With ``--updates-per-batch 1`` the ratio is 1 and the update is REINFORCE with a group
   baseline. Clip-higher and overlong filtering ride in ``extra_loss`` (``objective.py``).
2. Axes with reward-mixer weight 0 are logged, not trained on.
3. Upstream's traps (a KL weight reset every step, a clip that hides the gradient norm, a
   reference forward without KL, a KL reported without a reference) are worked around in
   :mod:`rg_tracer.dapo.upstream`; gradients are clipped by :class:`ClippingOptimizer`.
4. One forward with gradients per update: the policy adapter primes the tensor that
   upstream's ``train_step`` asks for. With ``--micro-batch-size`` the update runs in chunks
   with the whole batch's gradient, by gradient caching (:mod:`rg_tracer.dapo.micro_batch`):
   one extra forward without gradients.
5. Each step's prompts and sampling seeds derive from ``(seed, step)``
   (:func:`rg_tracer.runtime.run.mix_seed`), so ``--resume`` continues exactly where an
   uninterrupted run would be.
6. Under ``torchrun`` every process runs this loop on its share of each step
   (:mod:`rg_tracer.dapo.sharding`): gradients through DDP, upstream's trackers and adaptive
   KL fed the whole step (:func:`rg_tracer.dapo.upstream.synchronise`), one Ctrl-C stops every
   rank after the same step, and rank 0 alone writes the log and the checkpoints.
7. Failures end the run with one line and a state ``--resume`` continues exactly: a step
   whose gradient norm is not finite is caught before the optimizer moves anything (the run
   stops with a checkpoint of the last good step, or ``--skip-nonfinite`` skips it); policy
   probabilities that are not finite (diverged weights) stop it without saving them; a full
   disk stops it with the log's torn last line cut and no half checkpoint. :func:`train`
   releases the run directory's lock.

The trainer's methods for those failures live in :mod:`rg_tracer.dapo.step_failures`, those
that save and restore its checkpoint state in :mod:`rg_tracer.dapo.trainer_state`
(:class:`DAPOHybridTrainer` inherits both), to keep this module to the loop itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import time

import torch
from gepa_dapo_grn.dapo_core import DAPOBatch

from rg_tracer.dapo.config import TrainConfig
from rg_tracer.dapo.diagnostics import SlowGradient, weight_norms
from rg_tracer.dapo.micro_batch import GradientCache, sft_backward, use_micro_batch
from rg_tracer.dapo.objective import (
    clip_fraction, group_advantages, loss_correction, mixed_rewards,
)
from rg_tracer.dapo.optim import ClippingOptimizer, adamw
from rg_tracer.dapo.sampling import GroupSampler, ScoredBatch
from rg_tracer.dapo.setup import PreparedRun, prepare_run
from rg_tracer.dapo.sharding import batch_statistics, merge_step, sft_share
from rg_tracer.dapo.step_failures import NonFiniteStep, StepFailures, _FiniteGradients
from rg_tracer.dapo.trainer_state import TrainerState
from rg_tracer.dapo.upstream import dapo_trainer, synchronise, upstream_metrics
from rg_tracer.errors import UserError
from rg_tracer.reward_mixer import check_overlap
from rg_tracer.runtime.distributed import wrap_for_gradients
from rg_tracer.runtime.checkpoint import disk_full
from rg_tracer.runtime.evaluation import evaluate_run
from rg_tracer.runtime.log_writer import JsonlLogger, drop_torn_tail
from rg_tracer.runtime.lora import AdapterOffReference, describe as describe_lora
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.runtime.resources import step_resources
from rg_tracer.schema import end_record, step_record
from rg_tracer.runtime.run import (
    SALT_SFT_BATCH, StopSignal, mix_seed, progress_bar, release_run_dir, run_record,
)

__all__ = ["DAPOHybridTrainer", "train", "NonFiniteStep"]


class DAPOHybridTrainer(TrainerState, StepFailures):
    def __init__(self, run: PreparedRun) -> None:
        cfg = self.config = run.config
        self.run = run
        self.dist = run.dist
        self.policy = HFPolicyAdapter(run.model, run.tokenizer, lean_sampler=cfg.lean_sampler, precision=run.precision,
                                      cpu_gemm=cfg.cpu_gemm)
        self.policy.train_model = wrap_for_gradients(run.model, self.dist)
        adam = adamw(run.model, cfg.learning_rate, cfg.weight_decay, cfg.betas, cfg.no_decay)
        tracks_slow = cfg.grokfast_lambda > 0 or cfg.diag_every > 0
        self.slow_gradient = SlowGradient(cfg.grokfast_alpha, cfg.grokfast_lambda) if tracks_slow else None
        self.finite = _FiniteGradients(then=self.slow_gradient)
        self.optimizer = ClippingOptimizer(adam, cfg.max_grad_norm if cfg.clips_gradients else None,
                                           grad_filter=self.finite)
        # on resume the KL reference is the original model, not the checkpoint; with --lora it is
        # the base model, i.e. this one with the adapters off (no copy)
        reference = (HFPolicyAdapter(run.reference_model.requires_grad_(False), run.tokenizer,
                                     precision=run.precision, cpu_gemm=cfg.cpu_gemm)
                     if run.reference_model is not None else None)
        if run.peft_model is not None and cfg.kl_coef > 0:
            reference = AdapterOffReference(run.peft_model, run.tokenizer, precision=run.precision,
                                            cpu_gemm=cfg.cpu_gemm)
        self.dapo = dapo_trainer(self.policy, self.optimizer, cfg, run.mixer, reference)
        use_micro_batch(cfg.micro_batch_size, self.policy, self.dapo.ref_policy)  # chunked sampling, no-grad forwards
        self.trackers = synchronise(self.dapo, self.dist)
        if run.resumed_from_step is not None and self.dist.is_main:
            torn = drop_torn_tail(run.log_path)
            if torn:
                print(f"{run.log_path}: removed an unfinished last line ({torn} bytes) left by the previous process",
                      file=sys.stderr)
        self.logger = JsonlLogger(run.log_path, enabled=self.dist.is_main)
        self.step = 0
        self._saved_step = 0  # the step of the last checkpoint this trainer wrote or resumed from
        self.stop = StopSignal("stopping after this step (Ctrl-C again to abort without a checkpoint)")
        self.last_eval: list[dict] = []  # the records of the latest evaluation
        self._mixer_checked = False
        self._sft_full_batch = None  # the tokenised training split, built once for full-batch SFT
        self.sampler = GroupSampler(self.policy, run)
        if run.resume_state:
            self._restore(run.resume_state)

    # -- one step ---------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        if step <= self.config.sft_steps:
            return self._sft_step(step)
        t0 = time.perf_counter()
        batch = self._sample(step)
        if not self._mixer_checked:
            rewards = set(batch.feedbacks[0].rewards)
            check_overlap(self.run.mixer, rewards, f"--reward-mixer {self.config.reward_mixer}")
            self._mixer_checked = True
        t1 = time.perf_counter()
        g = self.config.group_size
        gepa = [fb.to_dict() for fb in batch.feedbacks]
        generation = [
            {"prompt_id": e.id, "completion_id": f"{e.id}#{i % g}", "prompt_tokens": pt,
             "completion_tokens": ct, "truncated": tr, "completion": text}
            for i, (e, pt, ct, tr, text) in enumerate(zip(
                batch.examples, batch.rollout.prompt_tokens, batch.rollout.completion_tokens,
                batch.rollout.truncated, batch.rollout.completions))
        ]
        scalar = mixed_rewards(batch.feedbacks, self.run.mixer)  # the training reward, mixed once
        rl = {**self._update(batch, scalar), **batch_statistics(scalar, generation, g), **batch.stats,
              **self._diagnostics(step)}
        t2 = time.perf_counter()
        payload = merge_step(self.dist, self.run.mixer, g, {
            "gepa": gepa, "generation": generation, "rl": rl,
            "timing": {"sample_and_score": t1 - t0, "train": t2 - t1,
                       **step_resources(self.policy.device, sum(batch.rollout.completion_tokens), t1 - t0)}})
        if self.dist.active:  # the log's gather to rank 0 (the gradient all-reduce is inside "train")
            payload["timing"]["gather"] = time.perf_counter() - t2
        record = self.logger.write("step", **step_record(
            step=step, phase="rl", **payload,
            curriculum={k: dataclasses.asdict(v) for k, v in self.dapo.curriculum.tasks.items()},
            safety=dataclasses.asdict(self.dapo.safety_controller.state),
        ))
        self.step = step
        return record

    def _diagnostics(self, step: int) -> dict:
        if not self.config.diag_every or step % self.config.diag_every:
            return {}
        return {**weight_norms(self.run.model), "diag/slow_fast_grad_ratio": self.slow_gradient.last_ratio}

    def _sft_step(self, step: int) -> dict:
        """One supervised step: mean token cross-entropy of the answer (+EOS unless --no-sft-eos-loss)."""
        t0 = time.perf_counter()
        examples = list(self.run.train.examples)
        if self.config.sft_batch_size:
            rng = random.Random(mix_seed(self.config.seed, step, SALT_SFT_BATCH))
            examples = [examples[rng.randrange(len(examples))] for _ in range(self.config.sft_batch_size)]
            rollout = self._sft_rollout(sft_share(self.dist, examples))
        else:  # the same batch every step: tokenise it once
            if self._sft_full_batch is None:
                self._sft_full_batch = self._sft_rollout(sft_share(self.dist, examples))
            rollout = self._sft_full_batch
        self.optimizer.zero_grad()
        if self.config.micro_batch_size:  # the same gradient, accumulated over chunks of rows
            loss = sft_backward(self.policy, rollout, self.config.micro_batch_size)
        else:
            logp, _ = self.policy.logprobs_with_entropy(rollout.actions, **rollout.inputs)
            loss = -logp.mean()
            loss.backward()
            loss = loss.item()
        self.optimizer.step()
        rl = {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": self.optimizer.last_grad_norm,
              "entropy": self.policy.last_entropy, "sft/examples": len(examples), **self._diagnostics(step)}
        payload = merge_step(self.dist, self.run.mixer, self.config.group_size,
                             {"gepa": [], "generation": [], "rl": rl, "timing": {"train": time.perf_counter() - t0}})
        record = self.logger.write("step", **step_record(step=step, phase="sft", **payload))
        self.step = step
        return record

    def _sft_rollout(self, examples: list):
        return self.policy.teacher_forced([e.prompt for e in examples], [e.answer for e in examples],
                                          eos_in_loss=self.config.sft_eos_loss)

    def _update(self, batch: ScoredBatch, scalar: torch.Tensor) -> dict:
        """``--updates-per-batch`` upstream train steps on one batch with mixed rewards ``scalar``;
        returns the ``rl`` metrics."""
        cfg, rollout = self.config, batch.rollout
        advantages = group_advantages(scalar, cfg.group_size, cfg.clip_advantage)
        weights = None
        if cfg.mask_truncated and any(rollout.truncated):
            weights = 1.0 - torch.tensor(rollout.truncated, dtype=torch.float32)
        logp_old, clip_fracs, corrections = None, [], []
        kl_coeff = self.dapo.config.kl_coeff
        share = self._token_share(rollout)
        everyone = [fb for part in self.dist.all_gather(batch.feedbacks) for fb in part] if self.trackers else None
        for _ in range(cfg.updates_per_batch):
            if self.trackers:  # upstream's trackers see the whole step, in global order, as in one process
                self.trackers.update(everyone)
            # --micro-batch-size: leaves from a no-grad pass in chunks; the gradient pass runs in optimizer.step()
            cache = GradientCache(self.policy, cfg.micro_batch_size) if cfg.micro_batch_size else None
            logp, entropy = (cache.score(rollout.actions, rollout.inputs) if cache
                             else self.policy.score_for_update(rollout.actions, **rollout.inputs))
            if logp_old is None:
                logp_old = logp.detach()  # same parameters, same forward: the batch is fresh
            ratio = torch.exp(logp.detach() - logp_old)
            clip_fracs.append(clip_fraction(ratio, cfg.clip_ratio, cfg.eps_high))
            extra = loss_correction(logp, logp_old, advantages.to(logp.device), upstream_eps=self.dapo.config.clip_ratio,
                                    eps_low=cfg.clip_ratio, eps_high=cfg.eps_high,
                                    weights=None if weights is None else weights.to(logp.device))
            corrections.append(0.0 if extra is None else extra.item())
            if cfg.entropy_coef:
                extra = -cfg.entropy_coef * share * entropy + (0.0 if extra is None else extra)
            with cache.armed(self.optimizer) if cache else contextlib.nullcontext():
                result = self.dapo.train_step(DAPOBatch(rollout.inputs, rollout.actions, logp_old), batch.feedbacks,
                                              extra_loss=extra)
        return self._rl_metrics(result.metrics, kl_coeff, clip_fracs, corrections[-1], share)

    def _token_share(self, rollout) -> float:
        """This rank's completion tokens over the ranks' mean (1 in one process). The entropy is a
        token mean per rank and DDP averages ranks, so weighting by it makes the averaged bonus
        (and the logged mean) the whole batch's token mean, as in one process."""
        if not self.dist.active:
            return 1.0
        tokens = float(rollout.inputs["completion_mask"].sum())
        return tokens / max(self.dist.mean(tokens), 1.0)

    def _rl_metrics(self, upstream: dict, kl_coeff: float, clip_fracs: list[float], correction: float,
                    share: float) -> dict:
        """The update's ``rl`` numbers (the batch's own come from :func:`batch_statistics`)."""
        return {
            "loss": upstream["loss/total"], "policy_loss": upstream["loss/policy"] + correction,
            "kl": None if self.config.kl_coef == 0 else upstream["kl/value"],
            "clip_ratio": sum(clip_fracs) / len(clip_fracs),
            "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": self.optimizer.last_grad_norm,
            "entropy": self.policy.last_entropy * share, "kl_coeff": kl_coeff,
            **{f"clip_ratio/update_{k + 1}": c for k, c in enumerate(clip_fracs) if len(clip_fracs) > 1},
            **upstream_metrics(upstream),
        }

    # -- evaluation ---------------------------------------------------------------
    def evaluate(self, step: int) -> list[dict]:
        """Greedy evaluation on the held-out split and a train sample: one ``eval`` record each."""
        self.last_eval = [self.logger.write("eval", **fields) for fields in evaluate_run(self.policy, self.run, step)]
        return self.last_eval

    # -- the loop -----------------------------------------------------------------
    def fit(self) -> int:
        cfg, run = self.config, self.run
        start = self.step
        lora = {"lora": describe_lora(run.peft_model, cfg)} if run.peft_model is not None else {}
        self.logger.stage("run", **run_record(cfg.to_dict(), run.model, run, run.resumed_from_step,
                                              precision=run.precision.describe(), cpu_gemm=self.policy.gemm, **lora))
        bar = progress_bar(cfg.max_steps, "train", cfg.progress and self.dist.is_main, initial=start)
        try:
            with self.stop:
                if cfg.eval_every and start == 0 and run.resumed_from_step is None:
                    self.evaluate(0)  # the baseline every later eval is read against
                for step in range(start + 1, cfg.max_steps + 1):
                    record = self._checked_step(step)
                    if cfg.evaluates_at(step, last=step == cfg.max_steps):
                        self.evaluate(step)
                    if cfg.save_every and step % cfg.save_every == 0 and step != cfg.max_steps:
                        self.save()
                    bar.update(1)
                    bar.set_postfix_str(_postfix(record), refresh=False)
                    if self.dist.any(self.stop.requested):  # every rank stops after the same step
                        break
                if self.step > start:
                    checkpoint = self.save()
                    status = "completed" if self.step == cfg.max_steps else "interrupted"
                    self.logger.write("end", **end_record(step=self.step, status=status))
                    if status == "interrupted" and self.dist.is_main:
                        print(f"interrupted after step {self.step}; checkpoint {checkpoint}; "
                              "continue with the same command plus --resume", file=sys.stderr)
                    self.dist.barrier()  # no rank exits (torchrun then stops the others) before the end record
                elif start == cfg.max_steps:  # resumed at the last step: the end record may be missing
                    self._complete()
        except Exception as exc:
            if not disk_full(exc):
                raise
            self._abandon_log()
            raise UserError(f"{run.run_dir}: No space left on device; free space and rerun with --resume") from None
        finally:
            bar.close()
            self.logger.close()
        return self.step


def _postfix(record: dict) -> str:
    if record["rl"].get("nonfinite_skipped"):
        return "skipped: not finite"
    if record["phase"] == "sft":
        return f"sft loss={record['rl']['loss']:.4f}"
    means: dict[str, list[float]] = {}
    for sample in record["gepa"]:
        for key, value in sample["rewards"].items():
            means.setdefault(key, []).append(value)
    axes = " ".join(f"{k[:8]}={sum(v) / len(v):.2f}" for k, v in means.items())
    rl = record["rl"]
    kl = "off" if rl["kl"] is None else f"{rl['kl']:.4f}"
    return f"reward={rl['reward_mixed_mean']:.3f} {axes} kl={kl}"


def train(config: TrainConfig) -> DAPOHybridTrainer:
    """Prepare, train to ``config.max_steps`` and return the trainer (for its ``step`` and paths)."""
    run = prepare_run(config)
    try:
        trainer = DAPOHybridTrainer(run)
        trainer.fit()
    finally:
        release_run_dir(run.run_dir)
    return trainer
