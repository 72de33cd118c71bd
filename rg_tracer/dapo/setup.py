"""Everything a run needs, checked before anything is written.

``prepare_run`` turns a :class:`TrainConfig` into loaded datasets, scorer, mixer,
model and output paths, raising :class:`UserError` for every user mistake first, so
that a bad option never leaves a half-written run directory behind.
"""

from __future__ import annotations

import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rg_tracer.dapo.config import TrainConfig
from rg_tracer.data import Dataset, load_dataset, resolve_eval_path
from rg_tracer.runtime.checkpoint import latest_checkpoint, read_trainer_state
from rg_tracer.errors import UserError
from rg_tracer.schema import LOG_NAME
from rg_tracer.models import load_model, resolve_device
from rg_tracer.reward_mixer import load_reward_mixer
from rg_tracer.scorers import load_scorer

__all__ = ["PreparedRun", "prepare_run", "versions"]



@dataclass
class PreparedRun:
    config: TrainConfig
    train: Dataset
    eval: Dataset | None
    scorer: Any
    mixer: Any
    model: Any
    tokenizer: Any
    device: Any
    run_dir: Path
    log_path: Path
    checkpoint: Path | None  # resume source
    resume_state: dict | None
    reference_model: Any = None  # on resume: the original --model, the KL reference
    resumed_from_step: int | None = None  # None: a fresh run; 0: --resume found no checkpoint


def versions() -> dict:
    import gepa_dapo_grn
    import torch
    import transformers

    import rg_tracer

    return {
        "rg_tracer": rg_tracer.__version__, "gepa_dapo_grn": gepa_dapo_grn.__version__,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _run_dir_state(config: TrainConfig, run_dir: Path, log_path: Path) -> Path | None:
    """The checkpoint to resume from; refuses to touch an existing run unless told how."""
    has_run = log_path.exists() or (run_dir / "checkpoints").exists()
    if config.resume:
        return latest_checkpoint(run_dir)
    if has_run and not config.overwrite:
        raise UserError(
            f"{run_dir} already holds a run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )
    return None


def prepare_run(config: TrainConfig) -> PreparedRun:
    import torch

    run_dir = Path(config.output_dir)
    log_path = run_dir / LOG_NAME
    checkpoint = _run_dir_state(config, run_dir, log_path)
    if not Path(config.reward_mixer).is_file():
        raise UserError(f"--reward-mixer {config.reward_mixer}: no such file (see configs/reward_mixer.yaml for the format)")
    mixer = load_reward_mixer(config.reward_mixer)
    if config.overlong_buffer and "overlong_penalty" not in mixer.weights:
        mixer.weights["overlong_penalty"] = 1.0  # DAPO adds the penalty to the reward as is
    train = load_dataset(config.dataset)
    eval_path = resolve_eval_path(config.dataset, config.eval_dataset)
    eval_set = load_dataset(eval_path) if eval_path else None
    scorer = load_scorer(config.scorer)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    source = str(checkpoint) if checkpoint else config.model
    model, tokenizer = load_model(source, trust_remote_code=config.trust_remote_code)
    model.to(device)
    resume_state = read_trainer_state(checkpoint) if checkpoint else None
    reference = None
    if checkpoint and config.kl_coef > 0:
        reference, _ = load_model(config.model, trust_remote_code=config.trust_remote_code)
        reference.to(device)
    if resume_state:
        config.check_resume(resume_state.get("config") or {}, allow_changes=config.resume_with_changes)
    if resume_state and resume_state["step"] >= config.max_steps:
        raise UserError(
            f"--resume: the checkpoint is at step {resume_state['step']} and --max-steps is "
            f"{config.max_steps}; raise --max-steps to train further"
        )
    if config.overwrite:
        log_path.unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    resumed_from = resume_state["step"] if resume_state else (0 if config.resume and log_path.exists() else None)
    if resumed_from == 0:
        print(f"--resume: no complete checkpoint under {run_dir}; starting again from step 0 "
              "(earlier steps in the log are superseded)", file=sys.stderr)
    return PreparedRun(config, train, eval_set, scorer, mixer, model, tokenizer, device,
                       run_dir, log_path, checkpoint, resume_state, reference, resumed_from)
