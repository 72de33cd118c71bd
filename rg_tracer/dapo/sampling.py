"""Rollouts for one step: sample groups, score them, shape rewards, filter groups.

Two DAPO techniques live here because they act before the loss:

* **Overlong reward shaping** adds the axis ``overlong_penalty``: 0 up to
  ``L_max - L_cache`` generated tokens, then falling linearly to -1 at ``L_max``.
* **Dynamic sampling** drops groups whose mixed rewards have zero variance (their
  advantages are all 0 after group normalisation) and samples further prompts until
  the batch holds ``batch_size`` informative groups or ``max_sampling_rounds`` is hit;
  then it tops the batch up with dropped groups so every step has the same shape.

Under ``torchrun`` each process takes a contiguous share of the step's prompts (whole groups,
``rg_tracer.dapo.sharding``) and fills its share of the batch; rank 0 samples with the seed a
one-process run uses, rank ``r`` with ``r`` folded into it. ``--seed-per-prompt`` seeds every
group from its place in the step's batch instead, so completions do not depend on the number
of processes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from rg_tracer.runtime.feedback_adapter import make_gepa_feedback
from rg_tracer.runtime.policy_adapter import Rollout
from rg_tracer.runtime.run import SALT_RESAMPLE, SALT_SAMPLING, PromptOrder, mix_seed
from rg_tracer.dapo.objective import mixed_rewards, zero_variance_groups
from rg_tracer.scorers import run_scorer

__all__ = ["ScoredBatch", "GroupSampler", "overlong_penalty"]


def overlong_penalty(length: int, max_len: int, buffer: int) -> float:
    """DAPO's soft overlong punishment for a completion of ``length`` tokens."""
    if buffer <= 0 or length <= max_len - buffer:
        return 0.0
    return max(-1.0, (max_len - buffer - length) / buffer)


@dataclass
class ScoredBatch:
    examples: list  # one dataset row per sample, prompt-major
    rollout: Rollout
    feedbacks: list
    stats: dict = field(default_factory=dict)


class GroupSampler:
    def __init__(self, policy, run) -> None:
        self.policy, self.run, self.config = policy, run, run.config
        self.order = PromptOrder(run.train.examples, run.config.seed)

    def prompts(self, step: int, round_: int) -> list:
        """Round 0: the step's slice of the prompt order; later rounds: a seeded draw."""
        examples, size, seed = self.run.train.examples, self.config.batch_size, self.config.seed
        if round_:
            rng = random.Random(mix_seed(seed, step, SALT_RESAMPLE, round_))
            return [examples[rng.randrange(len(examples))] for _ in range(size)]
        return self.order.take(step, size)

    def _score(self, step: int, round_: int) -> ScoredBatch:
        cfg, g, dist = self.config, self.config.group_size, self.run.dist
        everyone = self.prompts(step, round_)
        prompts = dist.shard(everyone)
        if cfg.seed_per_prompt:
            first = dist.rank * len(everyone) // dist.world_size
            parts = []
            for k, e in enumerate(prompts):
                torch.manual_seed(mix_seed(cfg.seed, step, SALT_SAMPLING, round_, first + k))
                parts.append(self.policy.sample([e.prompt], g, cfg.max_new_tokens, cfg.temperature))
            rollout = Rollout.concat(parts, self.policy.tokenizer.pad_token_id)
        else:
            torch.manual_seed(mix_seed(cfg.seed, step, SALT_SAMPLING, round_, *([dist.rank] if dist.rank else [])))
            rollout = self.policy.sample([e.prompt for e in prompts], g, cfg.max_new_tokens, cfg.temperature)
        rows = [e for e in prompts for _ in range(g)]
        scores = run_scorer(self.run.scorer, [e.prompt for e in rows], rollout.completions, [e.row for e in rows])
        feedbacks = []
        for i, (s, e, n) in enumerate(zip(scores, rows, rollout.completion_tokens)):
            fb = make_gepa_feedback(s, self.run.mapping, meta=e.row, sample=f"step {step}, sample {i} (prompt {e.id})")
            if cfg.overlong_buffer:
                fb.rewards["overlong_penalty"] = overlong_penalty(n, cfg.max_new_tokens, cfg.overlong_buffer)
            feedbacks.append(fb)
        return ScoredBatch(rows, rollout, feedbacks)

    def sample(self, step: int) -> ScoredBatch:
        cfg, g = self.config, self.config.group_size
        first = self._score(step, 0)
        if not cfg.dynamic_sampling:
            return first
        share = cfg.batch_size // self.run.dist.world_size  # groups this process fills
        kept, dropped, sampled, rounds = [], [], 0, 0
        batch = first
        while True:
            rounds += 1
            flat = zero_variance_groups(mixed_rewards(batch.feedbacks, self.run.mixer), g).tolist()
            sampled += len(flat)
            for group, is_flat in enumerate(flat):
                (dropped if is_flat else kept).append((batch, group))
            if len(kept) >= share or rounds >= cfg.max_sampling_rounds:
                break
            batch = self._score(step, rounds)
        n_kept = min(len(kept), share)
        chosen = (kept + dropped)[:share]
        merged = _merge(chosen, g, self.policy.tokenizer.pad_token_id)
        merged.stats = {"groups_sampled": sampled, "groups_kept": n_kept, "sampling_rounds": rounds}
        return merged


def _merge(groups: list[tuple[ScoredBatch, int]], g: int, pad_id: int) -> ScoredBatch:
    examples, feedbacks, parts = [], [], []
    for batch, group in groups:
        rows = list(range(group * g, (group + 1) * g))
        examples += [batch.examples[i] for i in rows]
        feedbacks += [batch.feedbacks[i] for i in rows]
        parts.append(batch.rollout.select(rows))
    return ScoredBatch(examples, Rollout.concat(parts, pad_id), feedbacks)
