"""LoRA adapters through peft: ``rg-tracer train --lora`` (``rg-tracer merge``: :mod:`.lora_merge`).

Why: full fine-tuning keeps, for every weight, the weight, its gradient and AdamW's two
moments (16 bytes a weight in float32), plus a second copy of the model as the KL reference.
LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") freezes the base
weights ``W`` and trains ``W + (alpha / r) B A`` with ``A`` (r x in) and ``B`` (out x r), so
gradients and optimizer state exist for the adapters only, and the base model itself, with the
adapters switched off, is the KL reference. What a checkpoint holds is the adapter (megabytes,
not the model); ``rg-tracer merge`` folds it into the base weights for serving.

How this departs from the paper and from peft's defaults, and why:

1. Targets: every linear projection of the attention and MLP blocks (peft's ``all-linear``,
   output layer excluded), not the paper's ``W_q, W_v`` (peft's default for Llama/Qwen2):
   adapting every projection is what matches full fine-tuning (Dettmers et al. 2023, QLoRA;
   Biderman et al. 2024, "LoRA Learns Less and Forgets Less"). ``--lora-target-modules`` narrows it.
2. The KL reference is the policy's own module run with the adapters off
   (:class:`AdapterOffReference`, peft's ``disable_adapter``): no second copy of the model, and
   exactly the base model's log-probs.
3. Memory under mixed precision (``--dtype bfloat16`` without ``--pure-dtype``): the frozen base
   weights never change, so float32 masters of them buy nothing; they are kept (and loaded) in
   the compute dtype, and only the adapters, which AdamW updates, are float32. peft would keep
   the base in whatever dtype it was loaded in. With ``--pure-dtype`` the adapters too are kept
   in the half dtype (peft would upcast them), as that option says.
4. ``--lora-dropout`` acts only in the training forward (:func:`adapter_dropout`, used by
   :meth:`~rg_tracer.runtime.policy_adapter.HFPolicyAdapter.logprobs_with_entropy`, the forward
   with gradients); peft's acts whenever the module is in train mode. Sampling, evaluation and
   the KL reference stay deterministic.
5. ``A``'s random initialisation is seeded from ``--seed`` (peft draws from torch's global
   generator in whatever state it is), so two runs with one seed start from the same adapters.
6. Target names that match no module are refused, naming the model's linear layers (peft
   refuses only when no name matches at all, and then names none).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from rg_tracer.errors import UserError
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.runtime.precision import FLOAT32, Precision

__all__ = ["require_peft", "add_adapters", "load_adapters", "linear_layer_names", "adapted_layer_names",
           "base_dtype", "describe", "adapter_dropout", "dropout_modules", "AdapterOffReference", "AdapterMismatch",
           "lora_config", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: mix_seed salt of the adapters' initialisation (rg_tracer.runtime.run lists the others)
SALT_LORA_INIT = 0x10A


def require_peft():
    """The ``peft`` module, or a one-line :class:`UserError` saying how to install it."""
    try:
        import peft
    except ImportError:
        raise UserError("--lora needs peft: pip install 'rg-tracer[lora]'") from None
    return peft


@contextlib.contextmanager
def _quiet():
    """peft calls transformers' deprecated ``is_gradient_checkpointing``: not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _linear_types() -> tuple[type, ...]:
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2's projections
    except ImportError:  # pragma: no cover - every transformers rg-tracer supports has it
        return (torch.nn.Linear,)
    return (torch.nn.Linear, Conv1D)


def linear_layer_names(model) -> tuple[str, ...]:
    """The distinct last name components of ``model``'s linear layers (``nn.Linear``, GPT-2's
    ``Conv1D``), in model order, the output layer left out: what ``--lora-target-modules`` names."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, _linear_types()) and module is not output]
    return tuple(dict.fromkeys(names))


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the module's full name, or its last components."""
    return name == target or name.endswith("." + target)


def _adaptable_types() -> tuple[type, ...]:
    """Module types peft's LoRA adapts (quantised linear layers subclass ``nn.Linear``)."""
    nn = torch.nn
    return (*_linear_types(), nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)


def _check_targets(model, targets: tuple[str, ...]) -> None:
    """Each name matches at least one module, and only layers LoRA can adapt (not a whole block)."""
    modules = list(model.named_modules())
    kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    where = f"its linear layers are {', '.join(linear_layer_names(model))}"
    missing = [t for t in targets if not any(_matches(n, t) for n, _ in modules)]
    if missing:
        which = ", ".join(repr(t) for t in missing)
        verb = "matches" if len(missing) == 1 else "match"
        raise UserError(f"--lora-target-modules {','.join(targets)}: {which} {verb} no module of this {kind} model; "
                        f"{where}")
    for target in targets:
        block = next((m for n, m in modules if _matches(n, target) and not isinstance(m, _adaptable_types())), None)
        if block is not None:
            raise UserError(f"--lora-target-modules {','.join(targets)}: {target!r} names a {type(block).__name__}, "
                            f"not a layer LoRA can adapt; {where}")


def lora_config(config, model):
    """peft's ``LoraConfig`` for a :class:`~rg_tracer.dapo.config.TrainConfig` and ``model`` (GPT-2's
    ``Conv1D`` stores its weight transposed: ``fan_in_fan_out``, which peft would set with a warning)."""
    from transformers.pytorch_utils import Conv1D

    peft = require_peft()
    transposed = any(isinstance(m, Conv1D) for m in model.modules())
    return peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=list(config.lora_targets) or "all-linear", task_type="CAUSAL_LM",
                           fan_in_fan_out=transposed)


def base_dtype(precision: Precision) -> torch.dtype:
    """The dtype the frozen base weights are loaded and kept in: the compute dtype (item 3)."""
    return precision.compute


def _settle_dtypes(peft_model, precision: Precision) -> None:
    """Frozen base weights in the compute dtype, the adapters in ``precision.weights`` (item 3)."""
    for param in peft_model.parameters():
        want = precision.weights if param.requires_grad else base_dtype(precision)
        if param.is_floating_point() and param.dtype != want:
            param.data = param.data.to(want)


def add_adapters(model, config, precision: Precision = FLOAT32):
    """Put fresh LoRA adapters (``config``'s rank, alpha, dropout and targets) on ``model``, in
    place; returns the peft model (``get_base_model()`` is ``model``, with LoRA layers injected).
    Target names that match nothing raise :class:`UserError` naming the layers there are."""
    from rg_tracer.runtime.run import mix_seed

    peft = require_peft()
    _check_targets(model, config.lora_targets)
    with torch.random.fork_rng(devices=[]), _quiet():
        torch.manual_seed(mix_seed(config.seed, 0, SALT_LORA_INIT))
        try:
            peft_model = peft.get_peft_model(model, lora_config(config, model))
        except ValueError as exc:  # whatever else peft refuses to adapt
            raise UserError(f"--lora-target-modules {config.lora_target_modules or 'all-linear'}: "
                            f"{' '.join(str(exc).split())[:300]}; this model's linear layers are "
                            f"{', '.join(linear_layer_names(model))}") from None
    _settle_dtypes(peft_model, precision)
    return peft_model


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class AdapterMismatch(Exception):
    """A checkpoint's adapter that does not fit the base model it is loaded onto."""


def load_adapters(model, checkpoint: Path, config, precision: Precision = FLOAT32):
    """Put the adapter saved in ``checkpoint`` on ``model`` (the base, loaded in
    :func:`base_dtype`), trainable; ``config`` gives alpha and dropout (which a resume may change).
    Raises :class:`AdapterMismatch` when the adapter's shapes or targets do not fit ``model``,
    and what peft or safetensors raise when the files are bad. Every saved tensor must load."""
    from safetensors import safe_open

    peft = require_peft()
    with torch.random.fork_rng(devices=[]), _quiet():  # the initial values it draws are overwritten
        try:
            peft_model = peft.PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True,
                                                        config=lora_config(config, model))
        except RuntimeError as exc:
            if "size mismatch" in str(exc):
                line = next(x for x in str(exc).splitlines() if "size mismatch" in x).strip()
                raise AdapterMismatch(line.rstrip(".")) from None
            raise
        except ValueError as exc:
            if "not found in the base model" in str(exc) or "Target module" in str(exc):
                raise AdapterMismatch(_first_line(exc)) from None
            raise
    expected = set(peft.get_peft_model_state_dict(peft_model))
    with safe_open(str(Path(checkpoint) / ADAPTER_WEIGHTS), "pt") as f:
        saved = set(f.keys())
    if saved != expected:  # peft loads with strict=False: a missing tensor would stay at its initial value
        odd = sorted(saved ^ expected)[0]
        raise ValueError(f"{'holds' if odd in saved else 'lacks'} the tensor {odd}")
    _settle_dtypes(peft_model, precision)
    return peft_model


def adapted_layer_names(peft_model) -> list[str]:
    """The distinct last name components of the layers that carry an adapter, in model order."""
    from peft.tuners.lora import LoraLayer

    names = [name.rsplit(".", 1)[-1] for name, module in peft_model.get_base_model().named_modules()
             if isinstance(module, LoraLayer)]
    return list(dict.fromkeys(names))


def _dtype_name(dtypes: set) -> str | None:
    names = sorted(str(d).replace("torch.", "") for d in dtypes)
    return names[0] if len(names) == 1 else ",".join(names) or None


def describe(peft_model, config) -> dict:
    """The run record's ``model.lora``: the adapters' shape, what they train, the dtypes kept."""
    import peft

    params = list(peft_model.parameters())
    trainable = [p for p in params if p.requires_grad]
    frozen = [p for p in params if not p.requires_grad]
    return {
        "r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
        "target_modules": adapted_layer_names(peft_model),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "frozen_parameters": sum(p.numel() for p in frozen),
        "base_weights_dtype": _dtype_name({p.dtype for p in frozen}),
        "adapter_dtype": _dtype_name({p.dtype for p in trainable}),
        "peft": peft.__version__,
    }


def dropout_modules(model) -> list[torch.nn.Module]:
    """The adapters' dropout modules of ``model`` (none without adapters or dropout): found once,
    when a policy is built, not on every training forward."""
    found = []
    for module in model.modules():
        dropout = getattr(module, "lora_dropout", None)
        if isinstance(dropout, torch.nn.ModuleDict):
            found.extend(m for m in dropout.values() if isinstance(m, torch.nn.Dropout))
    return found


@contextlib.contextmanager
def adapter_dropout(modules: list[torch.nn.Module]):
    """Inside: the adapters' dropout ``modules`` (:func:`dropout_modules`) in train mode (item 4);
    the rest of the model keeps its mode. A no-op for an empty list. Used by the training forward alone
    (``logprobs_with_entropy``), also when ``--micro-batch-size``'s values pass runs it without
    gradients: that pass must draw the same masks as the gradient pass it stands in for."""
    for module in modules:
        module.train()
    try:
        yield
    finally:
        for module in modules:
            module.eval()


class AdapterOffReference(HFPolicyAdapter):
    """The KL reference of a LoRA run: the policy's own module with its adapters disabled, i.e.
    the base model, with no copy of it. A policy adapter of its own (this one), so the training
    adapter's primed log-probs are never consumed here; ``options`` are its ``precision``, ...
    (``--micro-batch-size`` chunks it like any :class:`HFPolicyAdapter`)."""

    def __init__(self, peft_model, tokenizer, **options) -> None:
        super().__init__(peft_model.get_base_model(), tokenizer, **{"lean_sampler": False, **options})
        self._peft = (peft_model,)  # a tuple: not registered as a submodule of this one

    def logprobs(self, actions: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        with self._peft[0].disable_adapter():
            return super().logprobs(actions, **inputs)

    def clone(self) -> "AdapterOffReference":
        return self  # frozen by construction: the base weights never train
