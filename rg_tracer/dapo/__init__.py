"""DAPO on GEPA reward vectors: the training loop and what only it needs.

* :mod:`.config`      — :class:`TrainConfig`, the options of ``rg-tracer train``.
* :mod:`.prepare`     — :func:`prepare_run`: the shared inputs plus checkpoint and resume state.
* :mod:`.trainer`     — :class:`DAPOHybridTrainer` and :func:`train`, the loop.
* :mod:`.step_failures` — non-finite steps (skip or stop at the last good step), a full disk.
* :mod:`.trainer_state` — the trainer's checkpoint: save, restore on ``--resume``.
* :mod:`.sampling`    — groups of completions per prompt, overlong shaping, dynamic sampling.
* :mod:`.objective`   — advantages and the DAPO loss correction around upstream's loss.
* :mod:`.optim`       — AdamW parameter groups and the clipping wrapper that keeps the norm.
* :mod:`.upstream`    — the workarounds for ``gepa_dapo_grn``'s ``DAPOTrainer``.
* :mod:`.diagnostics` — weight norms and GrokFast's slow gradient.

What EGGROLL shares (policy adapter, decoding, log writer, evaluation, checkpoints, the
run skeleton) lives in :mod:`rg_tracer.runtime`. ``train`` and ``DAPOHybridTrainer`` load
on first use, so importing this package does not import torch.
"""

__all__ = ["DAPOHybridTrainer", "train"]


def __getattr__(name: str):
    if name in __all__:
        from rg_tracer.dapo import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
