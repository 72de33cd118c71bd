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
    """EMA of gradients: ``ema <- alpha * ema + (1 - alpha) * g``; optionally ``g += lam * ema``."""

    def __init__(self, alpha: float = 0.98, lam: float = 0.0) -> None:
        self.alpha, self.lam = alpha, lam
        self.ema: dict[int, torch.Tensor] = {}
        self.last_ratio: float = float("nan")

    def __call__(self, params: list[torch.Tensor]) -> None:
        slow_sq, fast_sq = 0.0, 0.0
        with torch.no_grad():
            for i, p in enumerate(params):
                if p.grad is None:
                    continue
                grad = p.grad
                ema = self.ema.get(i)
                if ema is None:
                    ema = self.ema[i] = grad.detach().clone()
                else:
                    ema.mul_(self.alpha).add_(grad, alpha=1 - self.alpha)
                fast_sq += float(grad.float().pow(2).sum())
                slow_sq += float(ema.float().pow(2).sum())
                if self.lam:
                    grad.add_(ema, alpha=self.lam)
        self.last_ratio = (slow_sq / fast_sq) ** 0.5 if fast_sq > 0 else float("nan")
