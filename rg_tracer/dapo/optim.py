"""An optimizer wrapper that records the gradient norm before clipping.

``DAPOTrainer.train_step`` clips gradients itself and discards the norm. We give it
``max_grad_norm=inf`` (a no-op clip) and clip here instead, in ``step()``, where the
pre-clip norm is still visible; the trainer only ever calls ``zero_grad`` and ``step``.
``max_grad_norm=None`` measures the norm and leaves the gradients as they are.
"""

from __future__ import annotations

import torch

__all__ = ["ClippingOptimizer"]


class ClippingOptimizer:
    def __init__(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None, grad_filter=None) -> None:
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.grad_filter = grad_filter  # called on the raw gradients before clipping (GrokFast)
        self.last_grad_norm: float = float("nan")

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.grad_filter is not None:
            self.grad_filter(params)
        if self.max_grad_norm is None:  # no clipping: measure only
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.last_grad_norm = float(norm)
        self.optimizer.step()

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
