"""Everything a run needs, checked before anything is written.

``prepare_run`` turns a :class:`TrainConfig` into the shared inputs
(:func:`rg_tracer.runtime.run.load_inputs`), the model (the latest checkpoint's on
``--resume``, with the original as the KL reference) and the output paths, raising
:class:`UserError` for every user mistake first, so that a bad option never leaves a
half-written run directory behind.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rg_tracer.dapo.config import TrainConfig
from rg_tracer.errors import UserError
from rg_tracer.models import load_model
from rg_tracer.runtime.checkpoint import latest_checkpoint, read_trainer_state
from rg_tracer.runtime.run import RunInputs, claim_run_dir, load_inputs
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


def _check_world(config: TrainConfig, inputs: RunInputs) -> None:
    """What a run of several processes needs: whole groups per process, rank-free rewards."""
    w = inputs.dist.world_size
    if w > 1 and config.batch_size % w:
        raise UserError(f"--batch-size {config.batch_size} does not divide among {w} processes: each takes whole "
                        f"groups of --group-size completions; use a multiple of {w}")
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


def prepare_run(config: TrainConfig) -> PreparedRun:
    run_dir = Path(config.output_dir)
    log_path = run_dir / LOG_NAME
    claim_run_dir(run_dir, ("checkpoints",), config.overwrite or config.resume, resumable=True)
    checkpoint = latest_checkpoint(run_dir) if config.resume else None
    inputs = load_inputs(config)
    _check_world(config, inputs)
    if config.overlong_buffer and "overlong_penalty" not in inputs.mixer.weights:
        inputs.mixer.weights["overlong_penalty"] = 1.0  # DAPO adds the penalty to the reward as is
    source = str(checkpoint) if checkpoint else config.model
    model, tokenizer = load_model(source, trust_remote_code=config.trust_remote_code)
    model.to(inputs.device)
    resume_state = read_trainer_state(checkpoint) if checkpoint else None
    reference = None
    if checkpoint and config.kl_coef > 0:
        reference, _ = load_model(config.model, trust_remote_code=config.trust_remote_code)
        reference.to(inputs.device)
    if resume_state:
        config.check_resume(resume_state.get("config") or {}, allow_changes=config.resume_with_changes)
        _check_resume_world(config, resume_state, inputs.dist.world_size)
    if resume_state and resume_state["step"] >= config.max_steps:
        raise UserError(
            f"--resume: the checkpoint is at step {resume_state['step']} and --max-steps is "
            f"{config.max_steps}; raise --max-steps to train further"
        )
    if config.overwrite and inputs.dist.is_main:
        log_path.unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    resumed_from = resume_state["step"] if resume_state else (0 if config.resume and log_path.exists() else None)
    inputs.dist.barrier()  # every process has checked the run directory before rank 0 writes to it
    if resumed_from == 0 and inputs.dist.is_main:
        print(f"--resume: no complete checkpoint under {run_dir}; starting again from step 0 "
              "(earlier steps in the log are superseded)", file=sys.stderr)
    return PreparedRun(**vars(inputs), config=config, model=model, tokenizer=tokenizer, run_dir=run_dir,
                       log_path=log_path, checkpoint=checkpoint, resume_state=resume_state,
                       reference_model=reference, resumed_from_step=resumed_from)
