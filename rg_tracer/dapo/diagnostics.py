"""Grokking diagnostics and GrokFast's slow-gradient filter.

* ``weight_norms``: total and per-block L2 norm of the weights. Weight norm falling under
  weight decay while train accuracy stays flat is the classic sign of the "cleanup" phase
  that precedes generalisation (Nanda et al. 2023).
* :class:`SlowGradient`: an EMA of the gradients (GrokFast, Lee et al. 2024). With
  ``lam > 0`` it amplifies the slow component, ``g <- g + lam * ema``, before clipping;
  in any case it reports ``||ema|| / ||g||``, the slow/fast gradient ratio, which rises as
  updates become consistent across steps.
"""

from __future__ import annotations

import re

import torch

__all__ = ["weight_norms", "SlowGradient"]

_BLOCK = re.compile(r"\.(?:h|layers|layer|blocks)\.(\d+)\.")


def weight_norms(model: torch.nn.Module) -> dict[str, float]:
    """``{"diag/weight_norm": total, "diag/weight_norm/block_<i>": ..., ".../other": ...}``."""
    squares: dict[str, float] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            match = _BLOCK.search(f".{name}")
            group = f"block_{int(match.group(1))}" if match else "other"
            squares[group] = squares.get(group, 0.0) + float(param.detach().float().pow(2).sum())
    out = {"diag/weight_norm": sum(squares.values()) ** 0.5}
    out.update({f"diag/weight_norm/{g}": v**0.5 for g, v in sorted(squares.items())})
    return out


class SlowGradient:
    """EMA of gradients: ``ema <- alpha * ema + (1 - alpha) * g``; optionally ``g += lam * ema``.

    The EMA is updated every step with one fused (``foreach``) pass; the ratio's norms are not:
    the gradient's is the one the optimizer measured (``norm``), the EMA's is computed when
    :attr:`last_ratio` is read (the trainer logs it every ``--diag-every`` steps)."""

    def __init__(self, alpha: float = 0.98, lam: float = 0.0) -> None:
        self.alpha, self.lam = alpha, lam
        self.ema: dict[int, torch.Tensor] = {}
        self._fast: float = float("nan")  # this step's gradient norm, before the amplification

    def __call__(self, params: list[torch.Tensor], norm: float | None = None) -> None:
        with torch.no_grad():
            idx = [i for i, p in enumerate(params) if p.grad is not None]
            grads = [params[i].grad for i in idx]
            if not grads:
                self._fast = float("nan")
                return
            seen = [k for k, i in enumerate(idx) if i in self.ema]
            if seen:
                emas = [self.ema[idx[k]] for k in seen]
                torch._foreach_lerp_(emas, [grads[k] for k in seen], 1 - self.alpha)  # alpha*ema + (1-alpha)*g
            for i, grad in zip(idx, grads):  # the first step: the EMA starts at the gradient
                if i not in self.ema:
                    self.ema[i] = grad.detach().clone()
            emas = [self.ema[i] for i in idx]
            self._fast = float(torch.nn.utils.get_total_norm(grads)) if norm is None else norm
            if self.lam:
                torch._foreach_add_(grads, emas, alpha=self.lam)

    @property
    def last_ratio(self) -> float:
        """``||ema|| / ||g||`` of the latest step (NaN before the first or for a zero gradient)."""
        if not self.ema or not self._fast > 0:
            return float("nan")
        return float(torch.nn.utils.get_total_norm(list(self.ema.values()))) / self._fast
