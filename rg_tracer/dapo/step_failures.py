"""What the trainer does with a step it cannot train, and with a full disk.

Split from :mod:`rg_tracer.dapo.trainer` to keep the loop readable: the gradient check that
runs inside the optimizer (:class:`_FiniteGradients`), the exception it raises
(:class:`NonFiniteStep`), and :class:`StepFailures`, the trainer's methods that skip such a
step (``--skip-nonfinite``) or stop the run at the last good step, and that close a log a full
disk tore. :class:`~rg_tracer.dapo.trainer.DAPOHybridTrainer` inherits them; they use its
attributes (``config``, ``run``, ``dist``, ``logger``, ``finite``, ``step``, ...).
"""

from __future__ import annotations

import math
import sys

from rg_tracer.dapo.sampling import ScoredBatch
from rg_tracer.errors import UserError
from rg_tracer.runtime.checkpoint import latest_checkpoint
from rg_tracer.runtime.log_writer import drop_torn_tail
from rg_tracer.schema import RL_KEYS, end_record, step_record

__all__ = ["NonFiniteStep", "StepFailures"]


class NonFiniteStep(Exception):
    """A step that cannot be trained: its gradient norm is not finite (raised before the
    optimizer update), or, ``diverged``, the policy's sampling probabilities are not (the
    weights themselves are bad, so the step cannot be skipped)."""

    def __init__(self, what: str, diverged: bool = False) -> None:
        super().__init__(what)
        self.what, self.diverged = what, diverged


class _FiniteGradients:
    """:class:`ClippingOptimizer`'s gradient filter: raises :class:`NonFiniteStep` when the raw
    gradients' norm (measured once, by the optimizer) is not finite, before GrokFast's EMA
    (``then``) sees them and before the optimizer moves anything (under DDP they are already
    averaged: every rank agrees). ``passed`` counts the updates let through since the trainer
    last reset it. Returns whether the gradients changed (GrokFast's amplification)."""

    def __init__(self, then=None) -> None:
        self.then, self.passed = then, 0

    def __call__(self, params, norm: float) -> bool:
        if not math.isfinite(norm):
            raise NonFiniteStep(f"non-finite gradient norm ({norm})")
        if self.then is not None:
            self.then(params, norm)
        self.passed += 1
        return bool(self.then is not None and self.then.lam)


class StepFailures:
    """The trainer's handling of non-finite steps and of a failed log write (a mixin)."""

    def _checked_step(self, step: int) -> dict:
        """:meth:`train_step`, where a :class:`NonFiniteStep` is skipped (``--skip-nonfinite``)
        or ends the run: with the state back at the last good step (saved unless it is already,
        or is step 0) when the failure came before any update, without a save otherwise."""
        before = self._tracker_state()
        self.finite.passed = 0
        try:
            return self.train_step(step)
        except NonFiniteStep as exc:
            failure = exc
        clean = self.finite.passed == 0  # no update yet: weights and optimizer are step - 1's
        if clean:
            self._load_trackers(before)  # upstream counted the batch before its update
        if self.config.skip_nonfinite and not failure.diverged:
            return self._skipped_step(step, failure)
        latest = None
        if clean and not failure.diverged and self.step > self._saved_step:
            latest = self.save()
        latest = latest or latest_checkpoint(self.run.run_dir)
        self.logger.write("end", **end_record(step=self.step, status="interrupted"))
        if failure.diverged:
            what = (f"{failure.what}{': it cannot be skipped' if self.config.skip_nonfinite else ''}: the weights "
                    f"after step {self.step} have diverged and were not saved")
        elif not clean:
            what = f"{failure.what} after the step had updated the weights, which were not saved"
        else:
            what = f"{failure.what}; stopped at step {self.step}" if self.step else f"{failure.what}; nothing trained yet"
        where = f"latest checkpoint {latest}" if latest else "no checkpoint"
        skip = "" if failure.diverged else ", or pass --skip-nonfinite to skip such steps"
        raise UserError(f"step {step}: {what} ({where}); continue with --resume --resume-with-changes and a lower "
                        f"--learning-rate or --max-grad-norm{skip}")

    def _skipped_step(self, step: int, failure: NonFiniteStep) -> dict:
        """Log ``step`` as skipped: no update, the metrics it could not compute null."""
        rl = {**dict.fromkeys(RL_KEYS), "lr": self.optimizer.param_groups[0]["lr"], "nonfinite_skipped": 1}
        record = self.logger.write("step", **step_record(
            step=step, phase="sft" if step <= self.config.sft_steps else "rl", rl=rl, timing={}))
        if self.dist.is_main:
            print(f"step {step}: {failure.what}; skipped (--skip-nonfinite)", file=sys.stderr)
        self.step = step
        return record

    def _sample(self, step: int) -> ScoredBatch:
        """The step's batch; :class:`NonFiniteStep` on every rank when one rank's policy gives
        probabilities that are not finite (torch.multinomial refuses them)."""
        batch = None
        try:
            batch = self.sampler.sample(step)
        except RuntimeError as exc:
            if "probability tensor contains" not in str(exc):
                raise
        if self.dist.any(batch is None):
            raise NonFiniteStep("the policy's sampling probabilities are not finite", diverged=True)
        return batch

    def _abandon_log(self) -> None:
        """After a failed write: close the log (its buffer may not flush) and cut a torn last line."""
        try:
            self.logger.close()
        except OSError:
            pass
        if self.dist.is_main:
            drop_torn_tail(self.run.log_path)
