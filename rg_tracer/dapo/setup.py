"""Everything a run needs, checked before anything is written.

``prepare_run`` takes the run directory's lock, then turns a :class:`TrainConfig` into the
shared inputs (:func:`rg_tracer.runtime.run.load_inputs`), the model (on ``--resume`` the
newest checkpoint that checks and loads, with the original as the KL reference; with ``--lora``
the base ``--model`` with adapters, fresh or the checkpoint's, :mod:`rg_tracer.runtime.lora`) and the
output paths, raising :class:`UserError` for every user mistake first, so that a bad option
never leaves a half-written run directory behind. Only then does it change the directory:
``--overwrite`` removes what the run owns (a symlink itself, never what it points to), a bad
newer checkpoint is set aside (``corrupt-step-*``, one line on stderr), and ``.tmp-*``
directories of killed saves are deleted.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rg_tracer.dapo.config import TrainConfig, largest_divisor
from rg_tracer.errors import UserError
from rg_tracer.models import check_context, load_model, saved_config
from rg_tracer.runtime.checkpoint import (
    CheckpointError, check_checkpoint, checkpoints, load_extra_tensors, load_optimizer_state, remove_stale, set_aside,
)
from rg_tracer.runtime.precision import FLOAT32, Precision, resolve_precision
from rg_tracer.runtime.run import RunInputs, choose_threads, claim_run_dir, load_inputs, release_run_dir
from rg_tracer.schema import LOG_NAME

__all__ = ["PreparedRun", "prepare_run"]


@dataclass
class PreparedRun(RunInputs):
    config: TrainConfig
    model: Any
    tokenizer: Any
    run_dir: Path
    log_path: Path
    checkpoint: Path | None  # resume source
    resume_state: dict | None
    reference_model: Any = None  # on resume: the original --model, the KL reference
    resumed_from_step: int | None = None  # None: a fresh run; 0: --resume found no checkpoint
    optimizer_state: dict | None = None  # on resume: AdamW's saved state (the trainer restores it and drops it)
    extra_tensors: dict | None = None  # on resume: extra.safetensors (the slow-gradient EMA)
    precision: Precision = FLOAT32  # --dtype, --pure-dtype
    peft_model: Any = None  # --lora: the peft model around ``model`` (the base with LoRA layers injected)


@dataclass
class _Resumable:
    """The checkpoint a resume starts from, loaded, and the newer ones found bad."""

    checkpoint: Path
    state: dict
    model: Any
    tokenizer: Any
    optimizer_state: dict
    extra_tensors: dict
    bad: list[tuple[Path, CheckpointError]]


def _check_world(config: TrainConfig, inputs: RunInputs) -> None:
    """What a run of several processes needs: whole groups per process, rank-free rewards."""
    w = inputs.dist.world_size
    if w > 1 and config.batch_size % w:
        raise UserError(f"--batch-size {config.batch_size} does not divide among {w} processes: each takes whole "
                        f"groups of --group-size completions; use a multiple of {w}")
    rows = config.batch_size * config.group_size // w  # the completions each process holds
    if w > 1 and config.micro_batch_size and rows % config.micro_batch_size:
        fits = largest_divisor(rows, config.micro_batch_size)
        raise UserError(f"--micro-batch-size {config.micro_batch_size} does not divide the {rows} completions each of "
                        f"{w} processes holds (--batch-size {config.batch_size} x --group-size {config.group_size} / "
                        f"{w}); use a divisor of {rows}, such as {fits}")
    if w > 1 and inputs.mixer.normalize:
        raise UserError(f"--reward-mixer {config.reward_mixer}: 'normalize: true' z-scores each axis over the batch a "
                        "process sees, so under torchrun the rewards would depend on the number of processes; "
                        "set 'normalize: false' or run in one process")


def _check_resume_world(config: TrainConfig, saved: dict, world: int) -> None:
    """A resumed run samples as an unbroken one only with the same number of processes,
    unless each prompt's seed is global (``--seed-per-prompt``)."""
    then = saved.get("world_size", 1)
    if then != world and not config.seed_per_prompt and not config.resume_with_changes:
        raise UserError(f"--resume: the checkpoint was written by {then} process(es), this run has {world}; each "
                        "process seeds its own sampling, so the run would not continue as it started. Resume with "
                        f"{then} process(es), or add --resume-with-changes (or train with --seed-per-prompt, "
                        "whose samples do not depend on the number of processes)")


@contextmanager
def _loading(file: Path):
    """Any failure to load ``file`` (of a checkpoint that passed :func:`check_checkpoint`) as a
    :class:`CheckpointError`: the checkpoint is unusable, whatever the library raised."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers, tokenizers, safetensors and torch each raise their own
        raise CheckpointError(file, f"cannot be loaded ({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None


def _check_optimizer_state(state: dict, model, saved_config: dict, file: Path) -> None:
    """AdamW's saved state fits ``model``: one entry per parameter, in the order the optimizer
    lists them (its groups as the checkpoint's --weight-decay-exclude makes them), each moment
    shaped like its parameter. A mismatch would load, then fail or mislead at the first step."""
    import torch

    from rg_tracer.dapo.optim import parameter_groups

    exclude = tuple(k for k in str(saved_config.get("weight_decay_exclude") or "").split(",") if k)
    params = [p for group in parameter_groups(model, 0.0, exclude) for p in group["params"]]
    with _loading(file):
        ids = [i for group in state["param_groups"] for i in group["params"]]
    if ids != list(range(len(params))):
        raise CheckpointError(file, f"lists {len(ids)} parameter ids, not 0..{len(params) - 1} for the model's "
                                    f"{len(params)} parameters (corrupt)")
    for idx, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value) and value.dim() and (idx >= len(params) or value.shape != params[idx].shape):
                raise CheckpointError(file.with_name("optimizer.safetensors"),
                                      f"{idx}.{name} does not fit the model's parameter {idx} (corrupt)")


def _check_lora_resume(config: TrainConfig, saved: dict, checkpoint: Path) -> None:
    """A checkpoint holds an adapter exactly when its run trained with ``--lora``; resuming it the
    other way is refused before it is loaded (it would not load, and it is not corrupt). The
    adapter's other fixed options are checked here too, before the adapter is built with them."""
    if bool(saved.get("lora")) == config.lora:
        if config.lora:
            config.check_resume(saved, allow_changes=config.resume_with_changes)
        return
    if config.lora:
        raise UserError(f"--resume --lora: {checkpoint} holds full weights (the run trained without --lora), not an "
                        "adapter; resume without --lora, or start the LoRA run in a new --output-dir (or --overwrite)")
    raise UserError(f"--resume: {checkpoint} holds a LoRA adapter (the run trained with --lora --lora-r "
                    f"{saved.get('lora_r')}); add --lora (its --lora-r and --lora-target-modules as saved), or start a "
                    "full fine-tuning run in a new --output-dir (or --overwrite)")


def _load_adapter_checkpoint(checkpoint: Path, config: TrainConfig, precision: Precision, saved: dict):
    """The base --model (in :func:`~rg_tracer.runtime.lora.base_dtype`) with the checkpoint's adapter
    on it, and the tokenizer. An adapter that does not fit --model is the user's --model, not a
    corrupt checkpoint: a :class:`UserError`."""
    from rg_tracer.runtime.lora import AdapterMismatch, base_dtype, load_adapters, require_peft

    require_peft()
    base, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code,
                                 dtype=base_dtype(precision))
    mismatch = None
    with _loading(checkpoint / "adapter_model.safetensors"):
        try:
            return load_adapters(base, checkpoint, config, precision), tokenizer
        except AdapterMismatch as exc:
            mismatch = exc
    then = saved.get("model")
    fix = f"resume with --model {then}" if then and then != config.model else "resume with the run's --model"
    raise UserError(f"--resume: the adapter in {checkpoint} does not fit --model {config.model} ({mismatch}); {fix}")


def _load_checkpoint(checkpoint: Path, config: TrainConfig, device, precision: Precision) -> _Resumable:
    from gepa_dapo_grn.curriculum import TaskStats

    state = check_checkpoint(checkpoint)
    with _loading(checkpoint / "trainer_state.json"):  # what the trainer rebuilds from it
        for stats in state["curriculum"].values():
            TaskStats(**stats)
    saved = state.get("config") or {}
    _check_lora_resume(config, saved, checkpoint)
    if config.lora:  # the base --model, then the adapter: the checkpoint holds no other weights
        model, tokenizer = _load_adapter_checkpoint(checkpoint, config, precision, saved)
    else:
        with _loading(checkpoint):
            model, tokenizer = load_model(str(checkpoint), trust_remote_code=config.trust_remote_code,
                                          dtype=precision.weights)
    with _loading(checkpoint / "optimizer.safetensors"):
        optimizer_state = load_optimizer_state(checkpoint, device)
    with _loading(checkpoint / "extra.safetensors"):
        extra = load_extra_tensors(checkpoint, device)
    _check_optimizer_state(optimizer_state, model, state.get("config") or {}, checkpoint / "optimizer.json")
    return _Resumable(checkpoint, state, model, tokenizer, optimizer_state, extra, bad=[])


def _newest_good_checkpoint(run_dir: Path, config: TrainConfig, device, precision: Precision) -> _Resumable | None:
    """The newest checkpoint that checks and loads, with the newer bad ones (set aside later).
    ``None``: there is no checkpoint. All bad: a :class:`UserError` naming the newest's bad file."""
    bad = []
    for checkpoint in checkpoints(run_dir):
        try:
            found = _load_checkpoint(checkpoint, config, device, precision)
        except CheckpointError as exc:
            bad.append((checkpoint, exc))
            continue
        found.bad = bad
        return found
    if bad:
        raise UserError(f"--resume: {bad[0][1]}; no earlier checkpoint under {run_dir / 'checkpoints'} is good "
                        "either: restore the file, or start afresh with --overwrite")
    return None


def _check_resume_model(config: TrainConfig, saved: dict, model) -> None:
    """A resumed run's --model is its KL reference from now on: one whose parameters differ in
    name or shape from the checkpoint's (another architecture or size) can never be, so it is
    refused even with --resume-with-changes. The same shapes with other weights (or the same
    model moved) is a change like any other (:meth:`TrainConfig.check_resume`)."""
    then = saved.get("model")
    if then is None or then == config.model:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = config.trust_remote_code
    try:
        other = AutoConfig.from_pretrained(config.model, trust_remote_code=remote)
        with torch.device("meta"):  # shapes only, no weights
            shapes = {n: tuple(p.shape) for n, p in
                      AutoModelForCausalLM.from_config(other, trust_remote_code=remote).named_parameters()}
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises for a model it cannot read
        raise UserError(f"--resume: --model {config.model} cannot be read "
                        f"({(str(exc).splitlines() or [type(exc).__name__])[0]}); resume with --model {then}") from None
    if shapes != {n: tuple(p.shape) for n, p in model.named_parameters()}:
        raise UserError(f"--resume: --model {config.model} is a {other.model_type} model whose parameters differ from "
                        f"those of the checkpoint's {model.config.model_type} model ({then}), so it cannot be the KL "
                        f"reference, even with --resume-with-changes; resume with --model {then}")


def _remove_owned(path: Path) -> None:
    """``--overwrite``: remove ``path`` (the log or checkpoints/); a symlink is removed itself,
    what it points to is left alone."""
    try:
        if path.is_symlink():
            target = os.readlink(path)
            path.unlink()
            print(f"--overwrite: removed the link {path} (its target {target} is left as it is)", file=sys.stderr)
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"--overwrite: cannot remove {path} ({exc.strerror}); remove it yourself or choose "
                        "another --output-dir") from None


def prepare_run(config: TrainConfig) -> PreparedRun:
    """Take the run directory's lock (released on failure here, else by the caller:
    :func:`rg_tracer.runtime.run.release_run_dir`) and prepare the run."""
    check_context(config)  # before anything is written: prompts that do not fit the model
    run_dir = Path(config.output_dir)
    claim_run_dir(run_dir, ("checkpoints",), config.overwrite or config.resume, resumable=True)
    try:
        return _prepare(config, run_dir)
    except BaseException:
        release_run_dir(run_dir)
        raise


def _prepare(config: TrainConfig, run_dir: Path) -> PreparedRun:
    log_path = run_dir / LOG_NAME
    inputs = load_inputs(config)
    _check_world(config, inputs)
    if config.overlong_buffer and "overlong_penalty" not in inputs.mixer.weights:
        inputs.mixer.weights["overlong_penalty"] = 1.0  # DAPO adds the penalty to the reward as is
    # from the original --model's config: a checkpoint is saved in the weights' dtype
    precision = resolve_precision(config.dtype, config.pure_dtype, saved_config(config.model, config.trust_remote_code),
                                  config.model, trains=True)
    found = _newest_good_checkpoint(run_dir, config, inputs.device, precision) if config.resume else None
    if found:
        saved = found.state.get("config") or {}
        if not config.lora:  # with --lora the adapter was loaded onto --model itself: it fits
            _check_resume_model(config, saved, found.model)
        config.check_resume(saved, allow_changes=config.resume_with_changes)
        _check_resume_world(config, found.state, inputs.dist.world_size)
        if found.state["step"] > config.max_steps:  # at max_steps: the run only lacks its end record
            raise UserError(
                f"--resume: the checkpoint is at step {found.state['step']} and --max-steps is "
                f"{config.max_steps}; raise --max-steps to train further"
            )
        model, tokenizer = found.model, found.tokenizer
    elif config.lora:  # the frozen base in the compute dtype (rg_tracer.runtime.lora, item 3)
        from rg_tracer.runtime.lora import add_adapters, base_dtype

        model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code,
                                      dtype=base_dtype(precision))
        model = add_adapters(model, config, precision)  # bad --lora-target-modules: refused here, nothing written
    else:
        model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code,
                                      dtype=precision.weights)
    peft_model = model if config.lora else None
    if peft_model is not None:
        model = peft_model.get_base_model()  # what trains and samples: the HF model with LoRA layers
    model.to(inputs.device)
    choose_threads(config, model, inputs.device)
    reference = None
    if found and config.kl_coef > 0 and not config.lora:  # --lora: the base with the adapters off
        reference, _ = load_model(config.model, trust_remote_code=config.trust_remote_code,
                                  dtype=precision.weights)
        reference.to(inputs.device)
    inputs.dist.barrier()  # every process has read the run directory before rank 0 changes it
    if inputs.dist.is_main:
        if config.overwrite:
            _remove_owned(log_path)
            _remove_owned(run_dir / "checkpoints")
        for checkpoint, error in found.bad if found else ():
            print(f"--resume: {error}; set aside as {set_aside(checkpoint).name}, resuming from "
                  f"{found.checkpoint.name}", file=sys.stderr)
        remove_stale(run_dir)
    resumed_from = found.state["step"] if found else (0 if config.resume and log_path.exists() else None)
    inputs.dist.barrier()  # rank 0 has tidied the run directory before anyone writes to it
    if resumed_from == 0 and inputs.dist.is_main:
        print(f"--resume: no complete checkpoint under {run_dir}; starting again from step 0 "
              "(earlier steps in the log are superseded)", file=sys.stderr)
    return PreparedRun(**vars(inputs), config=config, model=model, tokenizer=tokenizer, run_dir=run_dir,
                       log_path=log_path, checkpoint=found and found.checkpoint,
                       resume_state=found and found.state, reference_model=reference, resumed_from_step=resumed_from,
                       optimizer_state=found and found.optimizer_state, extra_tensors=found and found.extra_tensors,
                       precision=precision, peft_model=peft_model)
