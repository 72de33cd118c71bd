"""Which dtype a run computes in and which it keeps its weights in: ``--dtype``, ``--pure-dtype``.

Mixed precision as Micikevicius et al. (2018, "Mixed Precision Training") describe it, with
bfloat16 in place of float16: forward passes run under :func:`torch.autocast` in the half
dtype, while the trained weights and AdamW's moments stay float32 ("master weights"), so
an update smaller than half precision's resolution still lands. ``--pure-dtype`` keeps the
weights themselves in the half dtype (half the memory) and says what that costs.

How this departs from the paper:

1. No loss scaling. bfloat16 has float32's exponent range, so gradients do not underflow;
   float16 does need a scaler, and rg-tracer has none, so ``train`` refuses float16
   (``eggroll`` computes no gradients and accepts it).
2. ``--dtype auto`` reads the dtype the model was saved in (``config.json``'s ``dtype`` /
   ``torch_dtype``): a bf16 checkpoint computes in bf16 with fp32 masters, an fp32 one in fp32.
   transformers 5 would load a bf16 checkpoint as bf16 weights, and pure-bf16 training then
   drops most updates silently (measured: 15% of the weights had moved after 5 steps, 100% in
   fp32); here the weights are loaded in :attr:`Precision.weights`.
3. Sampling, the KL reference and evaluation run under the same autocast as the training
   forward, so the sampler's log-probs and the trainer's agree to the half dtype's rounding
   (``tests/test_precision.py`` reports the largest difference).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch

from rg_tracer.errors import UserError

__all__ = ["Precision", "resolve_precision", "saved_dtype", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Precision:
    """``compute``: the dtype of forward passes; ``weights``: the dtype the weights (and the
    optimizer's state) are kept in. They differ exactly when forwards run under autocast."""

    compute: torch.dtype = torch.float32
    weights: torch.dtype = torch.float32

    @property
    def autocast(self) -> bool:
        return self.compute != self.weights

    def context(self, device: torch.device):
        """The autocast region of a forward pass on ``device`` (a no-op in one dtype)."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.compute)

    def describe(self) -> dict:
        """What the run record states: ``{"compute", "weights", "autocast"}``, dtype names."""
        return {"compute": _NAMES[self.compute], "weights": _NAMES[self.weights], "autocast": self.autocast}


FLOAT32 = Precision()


def saved_dtype(model_config) -> str:
    """The dtype name a model's config says its weights were saved in (float32 when it names none)."""
    value = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return _NAMES.get(value, "float32")
    value = str(value or "float32").replace("torch.", "")
    return value if value in DTYPES else "float32"


def resolve_precision(dtype: str, pure: bool, model_config, model_name: str, trains: bool) -> Precision:
    """The :class:`Precision` for ``--dtype`` (``auto``: :func:`saved_dtype`) and ``--pure-dtype``.
    ``trains``: gradients are computed (``train``), so float16 is refused (no loss scaler)."""
    name = saved_dtype(model_config) if dtype == "auto" else dtype
    if trains and name == "float16":
        raise UserError(f"--dtype {dtype}: {model_name} is saved in float16, and training in float16 needs a loss "
                        "scaler, which rg-tracer has not; pass --dtype bfloat16 (float32's range) or --dtype float32")
    compute = DTYPES[name]
    if compute == torch.float32:
        return FLOAT32
    if pure:
        kept = "the weights and AdamW's state are" if trains else "the weights are"
        print(f"warning: --pure-dtype: {kept} kept in {name}; an update smaller than {name}'s resolution (about "
              f"{torch.finfo(compute).eps:.0e} of a weight) is lost, so small steps may train far less than in "
              "float32", file=sys.stderr)
        return Precision(compute, compute)
    return Precision(compute, torch.float32)
