"""``--micro-batch-size``: one update's forward and backward over chunks of rows, with exactly
the whole batch's gradient.

Why: a gradient forward holds every row's activations (and the (rows, completion, vocabulary)
log-softmax) until the backward; a chunk of ``m`` rows holds ``m`` rows' only. Calling upstream
once per chunk would not give the same update: ``DAPOTrainer.train_step`` builds its loss from
the whole batch's (N,) log-probs (advantages z-scored per group, the policy loss and the KL
averaged over N, rg-tracer's ``extra_loss`` with its clip-higher correction and an entropy that
is a token mean over the batch) and steps the optimizer once per call.

How: gradient caching (Gao, Zhang, Han and Callan 2021, "Scaling Deep Contrastive Learning
Batch Size under Memory Limited Setup", arXiv:2101.06983, the GradCache library). The loss
reaches the model only through the per-sequence log-probs ``logp`` (N,) and, with
``--entropy-coef``, the batch's completion-token entropy ``H``, so
``dL/dθ = Σ_i dL/dlogp_i · dlogp_i/dθ + dL/dH · dH/dθ`` and each row's term needs only its own
forward:

1. values pass (:meth:`GradientCache.score`): ``logp`` and ``H`` in chunks, without gradients,
   become detached leaves that require grad; the policy is primed with the ``logp`` leaf, so
   upstream's own ``policy.logprobs`` call returns it, and the trainer builds ``extra_loss``
   from the leaves exactly as it would from the real tensors;
2. upstream's ``train_step`` builds its whole-batch loss from the leaves, and its
   ``backward()`` stops at them: it fills ``logp.grad`` and ``H.grad`` (dL/dlogp, dL/dH) and no
   parameter's gradient (its ``clip_grad_norm_`` sees none);
3. gradient pass (:meth:`GradientCache.backward`), armed as
   :class:`~rg_tracer.dapo.optim.ClippingOptimizer`'s one-shot ``pre_step`` hook, so it runs
   inside upstream's ``optimizer.step()`` -- the only place between upstream's backward and
   the update -- before the gradient norm is measured: for each chunk a forward with
   gradients and ``torch.autograd.backward([logp_c, H_c], [logp.grad[c], H.grad · n_c / n])``
   (``H_c`` is the chunk's token mean, ``n_c`` its completion tokens, ``n`` the batch's), which
   accumulates the parameters' gradients; then the gradient filter, the clip and the AdamW
   step as without micro-batches.

How it departs from GradCache: GradCache caches the gradient of a representation and calls
the loss itself; here the loss belongs to upstream, so the cached quantities (N + 1 floats)
enter it through upstream's own ``logprobs`` call, and the second pass runs in the optimizer's
step. ``H`` is not a per-row quantity but a token mean over the batch, so each chunk's token
mean is weighted by its share of the tokens. Random state follows GradCache's ``RandContext``:
the CPU (and CUDA) generator state is saved before each chunk's values forward and restored
for the same chunk's gradient forward, inside ``torch.random.fork_rng``, so a random forward
(LoRA dropout) draws the same mask in both passes and the random stream after the update is
the values pass's alone. Both passes also go through the same function
(``policy.logprobs_with_entropy``), so whatever it switches on (dropout) is on in both. Under
DDP every chunk but the last runs its backward in ``no_sync()``: one all-reduce per update, of
the accumulated gradient.

Cost: one extra forward without gradients per update (the values pass). Without
``--micro-batch-size`` nothing here runs: one forward with gradients per update, primed, as
before. Generation and the KL reference's no-grad forward also run in chunks, through the
policy adapter's ``micro_batch`` (no extra pass; the sampled draws differ from one call's).
The supervised warm-up's loss ``-mean(logp)`` is linear in ``logp``, so :func:`sft_backward`
accumulates each chunk's ``-sum(logp_c) / N`` directly: no cache, no extra forward.

Exact in exact arithmetic; in float32 the gradients differ from the whole batch's by summation
order only (the tests hold them to 1e-6).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from rg_tracer.runtime.policy_adapter import HFPolicyAdapter, row_chunks

__all__ = ["GradientCache", "sft_backward", "use_micro_batch"]


def use_micro_batch(size: int, *policies) -> None:
    """Chunk these policies' generation and no-grad forwards by ``size`` rows (0: not at all);
    anything that is not an :class:`HFPolicyAdapter` (the stand-in reference) is left alone."""
    for policy in policies:
        if isinstance(policy, HFPolicyAdapter):
            policy.micro_batch = size


def _rows(inputs: dict, rows: slice) -> dict:
    return {k: v[rows] for k, v in inputs.items()}


def _sync_unless(model, skip: bool):
    """DDP's ``no_sync()`` when ``skip`` (no all-reduce in this backward); nothing otherwise."""
    return model.no_sync() if skip and hasattr(model, "no_sync") else nullcontext()


class _RandState:
    """The generators' state before a forward, to replay its random draws (GradCache's RandContext)."""

    def __init__(self, device: torch.device) -> None:
        self.devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextmanager
    def replayed(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


class GradientCache:
    """One update's two passes over chunks of ``micro_batch`` rows (see the module docstring)."""

    def __init__(self, policy: HFPolicyAdapter, micro_batch: int) -> None:
        self.policy, self.micro_batch = policy, micro_batch
        self.ran = False

    def score(self, actions: torch.Tensor, inputs: dict):
        """The values pass: ``(logp, entropy)`` leaves, (N,) and scalar, as ``score_for_update``
        returns them; the policy is primed with ``logp`` and ``last_entropy`` is the batch's."""
        self.actions, self.inputs = actions, inputs
        self.chunks = row_chunks(actions.shape[0], self.micro_batch)
        mask = inputs["completion_mask"]
        self.tokens = [float(mask[rows].sum()) for rows in self.chunks]
        self.total = max(sum(self.tokens), 1.0)
        logps, entropy_sum, self.rand = [], 0.0, []
        with torch.no_grad():
            for rows, tokens in zip(self.chunks, self.tokens):
                self.rand.append(_RandState(actions.device))
                logp, entropy = self.policy.logprobs_with_entropy(actions[rows], **_rows(inputs, rows))
                logps.append(logp)
                entropy_sum = entropy_sum + entropy * max(tokens, 1.0)  # the chunk's token sum
        self.logp = torch.cat(logps).detach().requires_grad_()
        self.entropy = (entropy_sum / self.total).detach().requires_grad_()
        self.policy.last_entropy = float(self.entropy.detach())
        self.policy.prime(actions, self.logp)
        return self.logp, self.entropy

    def backward(self) -> None:
        """The gradient pass: accumulate the parameters' gradients chunk by chunk from the
        gradients upstream's backward left on the leaves."""
        self.ran = True
        d_logp, d_entropy = self.logp.grad, self.entropy.grad
        if d_logp is None and d_entropy is None:
            return
        model, last, entropy = self.policy.train_model, len(self.chunks) - 1, self.policy.last_entropy
        for k, (rows, tokens, rand) in enumerate(zip(self.chunks, self.tokens, self.rand)):
            with _sync_unless(model, k < last), rand.replayed():
                logp, chunk_entropy = self.policy.logprobs_with_entropy(self.actions[rows], **_rows(self.inputs, rows))
                outputs, grads = [], []
                if d_logp is not None:
                    outputs.append(logp)
                    grads.append(d_logp[rows])
                if d_entropy is not None:
                    outputs.append(chunk_entropy)
                    grads.append(d_entropy * (tokens / self.total))
                torch.autograd.backward(outputs, grads)
        self.policy.last_entropy = entropy  # the batch's, not the last chunk's

    @contextmanager
    def armed(self, optimizer):
        """Run :meth:`backward` at the start of ``optimizer.step()`` for the ``train_step`` inside."""
        optimizer.pre_step = self.backward
        try:
            yield
        finally:
            optimizer.pre_step = None
        if not self.ran:
            raise RuntimeError("--micro-batch-size: upstream's train_step did not call optimizer.step(); "
                               "the gradient pass never ran")


def sft_backward(policy: HFPolicyAdapter, rollout, micro_batch: int) -> float:
    """Accumulate the gradient of the supervised loss ``-mean(logp)`` over chunks of
    ``micro_batch`` rows (one forward with gradients each); returns the loss and leaves
    ``policy.last_entropy`` the batch's completion-token mean."""
    actions, inputs = rollout.actions, rollout.inputs
    n, mask = actions.shape[0], inputs["completion_mask"]
    chunks = row_chunks(n, micro_batch)
    model = policy.train_model
    loss, entropy_sum, total = 0.0, 0.0, 0.0
    for k, rows in enumerate(chunks):
        with _sync_unless(model, k < len(chunks) - 1):
            logp, entropy = policy.logprobs_with_entropy(actions[rows], **_rows(inputs, rows))
            part = -logp.sum() / n
            part.backward()
        tokens = float(mask[rows].sum())
        loss += float(part.detach())
        entropy_sum += float(entropy.detach()) * max(tokens, 1.0)
        total += tokens
    policy.last_entropy = entropy_sum / max(total, 1.0)
    return loss
