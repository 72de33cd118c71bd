"""One generation's member fitness: generate -> score -> feedback -> mix, as the trainer does.

Every member answers the same ``P`` prompts. Member batches of the population are
stacked member-major into one ``generate`` call each (``N·P`` rows when the whole
population fits), the perturbation riding in the Linear/Conv1D hooks, so the KV cache
and left padding of :class:`~rg_tracer.runtime.policy_adapter.HFPolicyAdapter` work
unchanged. The scorer, the feedback mapping and upstream's ``mix_reward_vectors`` with
the ``--reward-mixer`` weights then give one scalar per completion, exactly the
trainer's reward; a member's fitness is the mean of its ``P`` scalars.

Under torchrun each process answers for a contiguous, pair-aligned range of members
(:func:`answer`), the ranks' results are gathered whole (:meth:`MemberEval.joined`: reward
*vectors*, so a normalising mixer sees the whole population) and every rank mixes them
(:func:`mix`) into the same fitness.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from gepa_dapo_grn.reward_mixers import mix_reward_vectors

from rg_tracer.runtime.feedback_adapter import make_gepa_feedback
from rg_tracer.eggroll.lowrank import Population, perturbed
from rg_tracer.runtime.run import SALT_MEMBER_SAMPLING, mix_seed
from rg_tracer.scorers import run_scorer

__all__ = ["MemberEval", "evaluate_members", "answer", "mix"]


@dataclass
class MemberEval:
    """Member-major results: row ``i·P + p`` is member ``i`` on prompt ``p``."""

    examples: list  # the P prompts (dataset Examples)
    completions: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    feedbacks: list = field(default_factory=list)
    mixed: torch.Tensor | None = None  # (N·P,) mixed scalar reward per completion
    fitness: torch.Tensor | None = None  # (N,) mean mixed reward per member

    @staticmethod
    def joined(parts: list["MemberEval"]) -> "MemberEval":
        """The results of consecutive member ranges, in order, as one (not yet mixed)."""
        out = MemberEval(parts[0].examples)
        for part in parts:
            out.completions += part.completions
            out.prompt_tokens += part.prompt_tokens
            out.completion_tokens += part.completion_tokens
            out.truncated += part.truncated
            out.feedbacks += part.feedbacks
        return out

    def prompt_major(self) -> list[int]:
        """Row indices reordered prompt-major (the log's order: a prompt's members are adjacent)."""
        p = len(self.examples)
        n = len(self.completions) // p
        return [i * p + j for j in range(p) for i in range(n)]


def evaluate_members(policy, layers, population: Population, examples: list, *, scorer, mapping, mixer,
                     member_batch: int, max_new_tokens: int, temperature: float) -> MemberEval:
    """Fitness of every member of ``population`` on ``examples`` (see module docstring)."""
    out = answer(policy, layers, population, examples, scorer=scorer, mapping=mapping, member_batch=member_batch,
                 max_new_tokens=max_new_tokens, temperature=temperature)
    return mix(out, mixer, population.size)


def answer(policy, layers, population: Population, examples: list, *, scorer, mapping, member_batch: int,
           max_new_tokens: int, temperature: float, members: range | None = None) -> MemberEval:
    """Completions and feedback of ``members`` (default: all) on ``examples``, member-major;
    sampled completions are seeded per member batch, from its first member's global index."""
    members = members if members is not None else range(population.size)
    prompts = [e.prompt for e in examples]
    out = MemberEval(list(examples))
    batch = member_batch or len(members)
    with torch.no_grad():
        for start in range(members.start, members.stop, batch):
            members_now = range(start, min(start + batch, members.stop))
            if temperature > 0:  # sampled completions: seeded per generation and member batch
                torch.manual_seed(mix_seed(population.seed, population.generation, start, SALT_MEMBER_SAMPLING))
            with perturbed(layers, population, members_now):
                rollout = policy.sample(prompts * len(members_now), 1, max_new_tokens,
                                        temperature=temperature or 1.0, greedy=temperature == 0)
            out.completions += rollout.completions
            out.prompt_tokens += rollout.prompt_tokens
            out.completion_tokens += rollout.completion_tokens
            out.truncated += rollout.truncated
    rows = list(examples) * len(members)
    scores = run_scorer(scorer, [e.prompt for e in rows], out.completions, [e.row for e in rows])
    member_of = [members.start + i // len(examples) for i in range(len(rows))]
    out.feedbacks = [
        make_gepa_feedback(s, mapping, meta=e.row,
                           sample=f"generation {population.generation}, member {m} (prompt {e.id})")
        for s, e, m in zip(scores, rows, member_of)
    ]
    for fb, m in zip(out.feedbacks, member_of):
        fb.meta.update(member=m, sign=population.sign_of(m))
    return out


def mix(out: MemberEval, mixer, population_size: int) -> MemberEval:
    """Each completion's mixed reward and each member's fitness (their mean over the prompts)."""
    out.mixed, _ = mix_reward_vectors([fb.rewards for fb in out.feedbacks], mixer)
    out.fitness = out.mixed.view(population_size, len(out.examples)).mean(dim=1)  # (N,)
    return out
