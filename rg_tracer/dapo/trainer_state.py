"""What a checkpoint holds of the trainer, and how a resumed trainer takes it back.

Split from :mod:`rg_tracer.dapo.trainer` to keep the loop readable: :class:`TrainerState`
holds the trainer's methods that save a checkpoint (rank 0 writes, the others wait), restore
the optimizer, GrokFast's slow gradient and upstream's trackers (KL weight, curriculum, safety
statistics) on ``--resume``, and finish a run whose last checkpoint is already at
``--max-steps``. :class:`~rg_tracer.dapo.trainer.DAPOHybridTrainer` inherits them; they use
its attributes (``config``, ``run``, ``dist``, ``dapo``, ``optimizer``, ``step``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from gepa_dapo_grn.curriculum import TaskStats

from rg_tracer.runtime.checkpoint import prune_checkpoints, save_checkpoint
from rg_tracer.schema import end_record

__all__ = ["TrainerState"]


class TrainerState:
    """The trainer's checkpoint and resume state (a mixin)."""

    def _restore(self, state: dict) -> None:
        self.step = self._saved_step = state["step"]
        self.optimizer.load_state_dict(self.run.optimizer_state)
        for group in self.optimizer.param_groups:  # JSON gave a list; AdamW's own type is a tuple
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
            group["lr"] = self.config.learning_rate  # --resume-with-changes: the new rate from the next step
        self.optimizer.param_groups[0]["weight_decay"] = self.config.weight_decay  # the decayed group
        if self.slow_gradient is not None:
            extra = self.run.extra_tensors or {}
            self.slow_gradient.ema = {int(k.split(".")[1]): v for k, v in extra.items() if k.startswith("slow_gradient.")}
        self.run.optimizer_state = self.run.extra_tensors = None  # restored: no second copy
        self._load_trackers(state)
        self._mixer_checked = self.step > self.config.sft_steps

    def _tracker_state(self) -> dict:
        """Upstream's KL weight, curriculum and safety statistics (copies)."""
        return {
            "kl_coeff": self.dapo.config.kl_coeff,
            "curriculum": {k: dataclasses.asdict(v) for k, v in self.dapo.curriculum.tasks.items()},
            "safety": dataclasses.asdict(self.dapo.safety_controller.state),
        }

    def _load_trackers(self, state: dict) -> None:
        self.dapo.config.kl_coeff = state["kl_coeff"]
        self.dapo.curriculum.tasks = {k: TaskStats(**v) for k, v in state["curriculum"].items()}
        safety = self.dapo.safety_controller.state
        for key, value in state["safety"].items():
            setattr(safety, key, value)

    def _trainer_state(self) -> dict:
        return {**self._tracker_state(), "config": self.config.to_dict(), "world_size": self.dist.world_size}

    def save(self):
        """Rank 0 writes the checkpoint (every rank holds the same state); the others wait."""
        extra = {f"slow_gradient.{i}": t for i, t in self.slow_gradient.ema.items()} if self.slow_gradient else None
        path = None
        # --lora: the peft model saves the adapter alone (the base weights never change)
        model = self.run.model if self.run.peft_model is None else self.run.peft_model
        if self.dist.is_main:
            path = save_checkpoint(self.run.run_dir, self.step, model, self.run.tokenizer,
                                   self.optimizer, self._trainer_state(), extra)
            prune_checkpoints(self.run.run_dir, self.config.keep_checkpoints)
        self._saved_step = self.step
        self.dist.barrier()
        return path

    def _complete(self) -> None:
        """The run's last checkpoint is at --max-steps: write the end record a kill prevented,
        or, when the log already ends with it, say so and write nothing."""
        if _ends_completed(self.run.log_path, self.step):
            if self.dist.is_main:
                print(f"{self.run.run_dir} already completed step {self.step}; raise --max-steps to train further",
                      file=sys.stderr)
            return
        self.logger.write("end", **end_record(step=self.step, status="completed"))


def _ends_completed(log_path: Path, step: int) -> bool:
    """Whether the log's last line is a ``completed`` end record at ``step``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            last = json.loads(f.read().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return False
    return isinstance(last, dict) and (last.get("kind"), last.get("status"), last.get("step")) == ("end", "completed", step)

