"""A ``gepa_dapo_grn`` ``Policy`` over any Hugging Face causal LM.

How it departs from upstream's ``integration.hf_lm`` (which crashes on step 1):

1. ``logprobs`` returns one value per sequence, shape (N,): the mean log-prob of the
   completion tokens (prompt and padding masked, EOS included). Upstream's group
   normalisation views advantages as (-1, G), so token-level values would group tokens.
2. Left padding gets explicit ``position_ids = cumsum(mask) - 1``; without them logits
   of padded rows differ from unpadded ones.
3. ``forward`` returns no logits and no values: ``DAPOTrainer.train_step`` calls
   ``policy(**inputs)`` only to read ``.values``, and an LM has no value head, so a
   real forward there would be a wasted pass with gradients.
4. The wrapped model stays in eval mode even when the trainer calls ``train()``:
   dropout would make the ratio differ from 1 by noise. Gradients still flow.
5. ``clone()`` returns a frozen, eval-mode copy for the KL reference.
6. Every forward (training, sampling, evaluation, the KL reference) runs under the run's
   :class:`~rg_tracer.runtime.precision.Precision` (``--dtype``): autocast in half precision
   over float32 weights, or nothing; in float32 on a CPU, with its linear layers on the kernels
   ``--cpu-gemm`` names (:mod:`rg_tracer.runtime.cpu_gemm`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from gepa_dapo_grn.policy_interfaces import Policy, PolicyOutput

from rg_tracer.runtime.cpu_gemm import forward_gemm, linear_kernels, resolve_cpu_gemm
from rg_tracer.runtime.decode import cached_decode, supports_cached_decode
from rg_tracer.runtime.length_groups import length_groups, overhead_positions
from rg_tracer.runtime.precision import FLOAT32, Precision

__all__ = ["HFPolicyAdapter", "Rollout", "row_chunks"]


def row_chunks(rows: int, size: int, group: int = 1) -> list[slice]:
    """Consecutive slices of at most ``size`` of ``rows`` rows that are ``rows // group`` runs of
    ``group`` copies: whole runs per slice when ``size >= group``, else each run split (its last
    slice may be shorter). ``size`` 0: one slice."""
    if size <= 0 or size >= rows:
        return [slice(0, rows)]
    if size >= group:
        step = (size // group) * group
        return [slice(s, min(s + step, rows)) for s in range(0, rows, step)]
    return [slice(g + s, g + min(s + size, group)) for g in range(0, rows, group) for s in range(0, group, size)]


@dataclass
class Rollout:
    """G completions per prompt, prompt-major: rows ``i*G .. i*G+G-1`` share prompt ``i``."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask (N, P+C); completion_mask (N, C)
    actions: torch.Tensor  # (N, C) completion token ids
    completions: list[str]
    prompt_tokens: list[int]
    completion_tokens: list[int]  # tokens trained on, EOS included
    truncated: list[bool]  # no EOS within max_new_tokens

    def select(self, rows: list[int]) -> "Rollout":
        idx = torch.tensor(rows, dtype=torch.long, device=self.actions.device)
        pick = lambda values: [values[i] for i in rows]  # noqa: E731
        return Rollout({k: v[idx] for k, v in self.inputs.items()}, self.actions[idx], pick(self.completions),
                       pick(self.prompt_tokens), pick(self.completion_tokens), pick(self.truncated))

    @staticmethod
    def concat(parts: list["Rollout"], pad_id: int) -> "Rollout":
        """Stack rollouts of different widths: prompts left-padded, completions right-padded."""
        width_p = max(p.inputs["input_ids"].shape[1] - p.actions.shape[1] for p in parts)
        width_c = max(p.actions.shape[1] for p in parts)
        ids, masks, comp_masks, actions = [], [], [], []
        for p in parts:
            c = p.actions.shape[1]
            prompt_ids, prompt_mask = p.inputs["input_ids"][:, :-c], p.inputs["attention_mask"][:, :-c]
            left, right = width_p - prompt_ids.shape[1], width_c - c
            act = F.pad(p.actions, (0, right), value=pad_id)
            comp = F.pad(p.inputs["completion_mask"], (0, right), value=0)
            ids.append(torch.cat([F.pad(prompt_ids, (left, 0), value=pad_id), act], 1))
            masks.append(torch.cat([F.pad(prompt_mask, (left, 0), value=0), comp], 1))
            comp_masks.append(comp)
            actions.append(act)
        join = lambda name: [v for p in parts for v in getattr(p, name)]  # noqa: E731
        inputs = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks), "completion_mask": torch.cat(comp_masks)}
        return Rollout(inputs, torch.cat(actions), join("completions"), join("prompt_tokens"),
                       join("completion_tokens"), join("truncated"))


class HFPolicyAdapter(Policy):
    #: ``--micro-batch-size``: rows per generation call and per no-grad ``logprobs`` forward
    #: (0: all at once); the trainer sets it, and :mod:`rg_tracer.dapo.micro_batch` chunks the
    #: gradient forward by it
    micro_batch: int = 0

    def __init__(self, model: torch.nn.Module, tokenizer, lean_sampler: bool = True,
                 precision: Precision = FLOAT32, cpu_gemm: str = "auto") -> None:
        super().__init__()
        self.precision = precision
        self.gemm = resolve_cpu_gemm(cpu_gemm)  # onednn or aten: the CPU kernels of fp32 linears
        self._forward_gemm = forward_gemm(self.gemm, model)  # aten where no layer gains from oneDNN
        self.model = model
        # the module gradient forwards go through: the model, or its DistributedDataParallel
        # wrapper under torchrun (sampling, evaluation, clone() and saving use the bare model)
        self.train_model = model
        self.tokenizer = tokenizer
        self.model.eval()
        self._keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.lean_sampler = lean_sampler
        self._cached_decode = lean_sampler and supports_cached_decode(model)
        self.last_entropy: float | None = None
        self._primed: tuple | None = None
        self._overhead: float | None = None  # a forward's fixed cost in positions (length_groups)
        from rg_tracer.runtime.lora import dropout_modules  # lora imports this module

        self._lora_dropouts = dropout_modules(model)  # --lora-dropout's modules (usually none)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> "HFPolicyAdapter":
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, **inputs: torch.Tensor) -> PolicyOutput:
        return PolicyOutput(logits=torch.empty(0), values=None)

    def clone(self) -> "HFPolicyAdapter":
        ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        return HFPolicyAdapter(ref, self.tokenizer, self.lean_sampler, self.precision, self.gemm)

    def computing(self, device) -> contextlib.AbstractContextManager:
        """The context a forward runs in: autocast for ``--dtype`` (:class:`Precision`), else for
        float32 on a CPU the linear layers' kernels (``--cpu-gemm``, :mod:`rg_tracer.runtime.cpu_gemm`).
        The lean sampler is the exception: ``cached_decode`` chooses its own kernels."""
        if self.precision.autocast:
            return self.precision.context(device)
        return linear_kernels(self._forward_gemm, device)

    def logprobs(self, actions: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """Mean completion-token log-prob per sequence, (N,), from raw logits.

        Returns the tensor primed by :meth:`score_for_update` (or :meth:`prime`) when called
        with the same ``actions`` object, so the trainer's call reuses that forward pass and
        graph. Otherwise one forward, in chunks of :attr:`micro_batch` rows when that is set.
        """
        primed, self._primed = self._primed, None
        if primed is not None and primed[0] is actions and torch.is_grad_enabled():
            return primed[1]
        if not self.micro_batch or actions.shape[0] <= self.micro_batch:
            return self._logprobs_and_entropy(actions, inputs, self.model)[0]
        # --micro-batch-size: chunks of rows (the KL reference's no-grad forward), each row as it was
        return torch.cat([self._logprobs_and_entropy(actions[rows], {k: v[rows] for k, v in inputs.items()},
                                                     self.model)[0]
                          for rows in row_chunks(actions.shape[0], self.micro_batch)])

    def score_for_update(self, actions: torch.Tensor, **inputs: torch.Tensor):
        """One forward with gradients: ``(logp, entropy)``, (N,) and scalar.

        The next ``logprobs`` call with these ``actions`` returns this ``logp``, so
        ``DAPOTrainer.train_step`` adds no forward pass, the old log-probs of a fresh
        batch are ``logp.detach()``, and an entropy bonus can ride in ``extra_loss``.
        """
        logp, entropy = self.logprobs_with_entropy(actions, **inputs)
        self.prime(actions, logp)
        return logp, entropy

    def prime(self, actions: torch.Tensor, logp: torch.Tensor) -> None:
        """Make the next ``logprobs`` call with these ``actions`` (and gradients on) return ``logp``:
        :meth:`score_for_update`'s tensor, or with ``--micro-batch-size`` the detached leaf that
        :class:`rg_tracer.dapo.micro_batch.GradientCache` collects the loss's gradient in."""
        self._primed = (actions, logp)

    def logprobs_with_entropy(self, actions: torch.Tensor, **inputs: torch.Tensor):
        """``(logp, entropy)`` with gradients (through :attr:`train_model`); records the entropy
        as ``last_entropy``. LoRA adapters' dropout (``--lora-dropout``) acts here, and only here."""
        from rg_tracer.runtime.lora import adapter_dropout

        with adapter_dropout(self._lora_dropouts):
            logp, entropy = self._logprobs_and_entropy(actions, inputs, self.train_model)
        self.last_entropy = float(entropy.detach())
        return logp, entropy

    def _logprobs_and_entropy(self, actions: torch.Tensor, inputs: dict, model: torch.nn.Module):
        """``(logp, entropy)``: on a CPU, over groups of rows of similar completion length, each
        trimmed to its own width (:mod:`rg_tracer.runtime.length_groups`); otherwise one forward.
        Not under DDP, whose reducer expects one forward per backward."""
        mask = inputs["completion_mask"]
        if actions.device.type != "cpu" or model is not self.model or actions.shape[0] < 2:
            return self._forward(actions, inputs, model)
        if self._overhead is None:
            self._overhead = overhead_positions(self.model)
        groups = length_groups(mask.sum(-1), self._overhead)
        if len(groups) == 1:
            return self._forward(actions, inputs, model)
        p = inputs["attention_mask"].shape[1] - actions.shape[1]
        prompt_lengths = inputs["attention_mask"][:, :p].sum(-1)
        logps, entropy_sum = [], 0.0
        for rows in groups:
            c, w = max(int(mask[rows].sum(-1).max()), 1), int(prompt_lengths[rows].max())
            keep = slice(p - w, p + c)  # the group's own prompt padding and completion width
            part = {"input_ids": inputs["input_ids"][rows][:, keep],
                    "attention_mask": inputs["attention_mask"][rows][:, keep], "completion_mask": mask[rows][:, :c]}
            logp, entropy = self._forward(actions[rows][:, :c], part, model)
            logps.append(logp)
            entropy_sum = entropy_sum + entropy * part["completion_mask"].sum()
        order = torch.cat(groups).to(actions.device)
        return torch.cat(logps)[torch.argsort(order)], entropy_sum / mask.sum().clamp(min=1)

    def _forward(self, actions: torch.Tensor, inputs: dict, model: torch.nn.Module):
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        completion_mask = inputs["completion_mask"].to(torch.float32)  # (N, C)
        c = actions.shape[1]
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": c + 1} if self._keep_logits else {}
        with self.computing(input_ids.device):
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids, use_cache=False, **kwargs,
            ).logits
        logits = logits[:, -(c + 1):-1].float()  # (N, C, V): position t predicts token t+1
        logp_all = F.log_softmax(logits, dim=-1)
        token_logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # (N, C)
        lengths = completion_mask.sum(-1).clamp(min=1.0)
        seq_logp = (token_logp * completion_mask).sum(-1) / lengths  # (N,)
        token_entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N, C)
        entropy = (token_entropy * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)
        return seq_logp, entropy

    @torch.no_grad()
    def sample(self, prompts: list[str], group_size: int, max_new_tokens: int,
               temperature: float = 1.0, greedy: bool = False) -> Rollout:
        """Generate ``group_size`` completions for each prompt (prompt-major, contiguous).

        Through :func:`~rg_tracer.runtime.decode.cached_decode` where it supports the model and
        ``lean_sampler`` is on, else ``model.generate``: the same tokens either way.

        With :attr:`micro_batch` set (``--micro-batch-size``) the rows are generated in calls of
        at most that many: whole prompts per call when it holds a group, else each prompt's
        copies split. The prompts are padded together first, so every row is computed as in one
        call (a greedy sample is the same); sampled draws differ from one call's, as the random
        stream is consumed call by call.
        """
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_ids = enc["input_ids"].to(self.device).repeat_interleave(group_size, dim=0)
        prompt_mask = enc["attention_mask"].to(self.device).repeat_interleave(group_size, dim=0)
        chunks = (row_chunks(prompt_ids.shape[0], self.micro_batch, group_size) if self.micro_batch
                  else [slice(0, prompt_ids.shape[0])])
        parts = [self._generate(prompt_ids[rows], prompt_mask[rows], max_new_tokens, temperature, greedy)
                 for rows in chunks]
        return parts[0] if len(parts) == 1 else Rollout.concat(parts, tok.pad_token_id)

    def _generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                  temperature: float, greedy: bool) -> Rollout:
        """One generation call over these (already repeated) prompt rows."""
        tok = self.tokenizer
        if self._cached_decode:  # it picks its own kernels (``gemm``): no mode over every op of its loop
            with self.precision.context(self.device):
                actions = cached_decode(self.model, prompt_ids, prompt_mask, max_new_tokens, tok.eos_token_id,
                                        tok.pad_token_id, temperature, greedy, gemm=self.gemm)
            return self._rollout(prompt_ids, prompt_mask, actions)
        sampling = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0,
        }
        with self.computing(self.device):
            sequences = self.model.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **sampling,
            )
        return self._rollout(prompt_ids, prompt_mask, sequences[:, prompt_ids.shape[1]:])

    @torch.no_grad()
    def teacher_forced(self, prompts: list[str], targets: list[str], eos_in_loss: bool = True) -> Rollout:
        """A rollout whose completions are ``targets`` followed by EOS (supervised warm-up).

        With ``eos_in_loss=False`` the EOS position is left out of ``completion_mask`` (the
        loss and entropy mask), so the loss is over the answer tokens only; EOS stays in the
        sequence, where as the last token it cannot change any earlier position's logits.
        """
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in targets]
        width = max(len(i) for i in ids)
        actions = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
        rollout = self._rollout(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device),
                                actions.to(self.device))
        if not eos_in_loss:
            answer = torch.zeros_like(actions, dtype=torch.bool)
            for row, i in enumerate(ids):
                answer[row, : len(i) - 1] = True
            rollout.inputs["completion_mask"] = rollout.inputs["completion_mask"] * answer.to(self.device).long()
        return rollout

    def _rollout(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, actions: torch.Tensor) -> Rollout:
        """Mask everything after each row's first EOS and pack the tensors the trainer needs."""
        tok = self.tokenizer
        is_eos = actions == tok.eos_token_id  # (N, C)
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        completion_mask = (~after_eos).long()
        actions = actions.masked_fill(after_eos, tok.pad_token_id)
        text_ids = actions.masked_fill(is_eos, tok.pad_token_id)
        inputs = {
            "input_ids": torch.cat([prompt_ids, actions], dim=1),
            "attention_mask": torch.cat([prompt_mask, completion_mask], dim=1),
            "completion_mask": completion_mask,
        }
        return Rollout(
            inputs=inputs, actions=actions, completions=tok.batch_decode(text_ids, skip_special_tokens=True),
            prompt_tokens=prompt_mask.sum(-1).tolist(), completion_tokens=completion_mask.sum(-1).tolist(),
            truncated=(~is_eos.any(-1)).tolist(),
        )
