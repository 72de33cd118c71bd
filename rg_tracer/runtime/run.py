"""What every run does around its search, written once for ``train`` (DAPO) and ``eggroll`` (ES).

* :func:`load_inputs` loads and checks the inputs both searches read (reward mixer, datasets,
  scorer and its feedback mapping, device, threads), raising :class:`UserError` before the
  run directory is touched, so a bad option never leaves a half-written run behind.
* :func:`claim_run_dir` takes the run directory's lock (one process at a time; rank 0 under
  torchrun) and refuses to write into a directory that already holds a run unless told;
  :func:`release_run_dir` lets go.
* :func:`mix_seed` is the one seed function: every random choice of a run (prompt order,
  sampling, perturbations, eval samples) is seeded by ``mix_seed(seed, index, salt, ...)``,
  so a resumed run draws what an unbroken one would. The salts are named below.
* :class:`PromptOrder` hands out each step's prompts: consecutive slices of a per-epoch
  seeded permutation of the training split.
* :class:`StopSignal` and :func:`progress_bar` are the loop skeleton: Ctrl-C finishes the
  current step (a second Ctrl-C aborts), only where a handler can be installed (the main thread).
* :func:`run_record` builds the fields of the ``run`` record that opens each log segment.
"""

from __future__ import annotations

import fcntl
import os
import platform
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rg_tracer import schema
from rg_tracer.data import Dataset, load_dataset, resolve_eval_path
from rg_tracer.errors import UserError
from rg_tracer.runtime.distributed import Dist
from rg_tracer.reward_mixer import load_reward_mixer, resolve_mixer_path
from rg_tracer.scorers import load_scorer
from rg_tracer.scorers.mapping import FeedbackMappingConfig

__all__ = [
    "RunInputs", "load_inputs", "choose_threads", "claim_run_dir", "release_run_dir", "LOCK_NAME", "mix_seed", "PromptOrder",
    "StopSignal", "progress_bar",
    "run_record", "versions", "SALT_SAMPLING", "SALT_PROMPT_ORDER", "SALT_EVAL_ORDER", "SALT_SFT_BATCH",
    "SALT_RESAMPLE", "SALT_MEMBER_SAMPLING",
]

# The salts of mix_seed(seed, index, salt[, more]): one per kind of random choice.
SALT_SAMPLING = 0  # torch's seed for a step's completions (index: step; more: dynamic sampling's round)
SALT_PROMPT_ORDER = 1  # the permutation of the training split (index: epoch)
SALT_EVAL_ORDER = 2  # which training prompts an eval samples (index: 0, the same every eval)
SALT_SFT_BATCH = 3  # a supervised mini-batch (index: step)
SALT_RESAMPLE = 10  # the prompts of dynamic sampling's extra rounds (index: step; more: the round)
SALT_MEMBER_SAMPLING = 0x5A  # ES members' sampling (mix_seed(seed, generation, first member, salt))

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators")
    over ``parts``: a 63-bit seed stable across runs, platforms and Python versions, with no
    collisions between nearby tuples (unlike a linear combination of the parts)."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (int(part) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


@dataclass
class RunInputs:
    """The inputs both searches read, loaded and checked."""

    train: Dataset
    eval: Dataset | None
    scorer: Any
    mapping: FeedbackMappingConfig
    mixer: Any
    device: Any
    dist: Dist


def load_inputs(config) -> RunInputs:
    """Load ``config``'s mixer, datasets and scorer; join the process group ``torchrun``
    started, if any (:mod:`.distributed`); pick the device and the torch threads."""
    import torch

    from rg_tracer.models import resolve_device
    from rg_tracer.runtime.distributed import init_distributed

    mixer_path = resolve_mixer_path(config.reward_mixer)
    if not mixer_path.is_file():
        raise UserError(f"--reward-mixer {config.reward_mixer}: no such file (see configs/reward_mixer.yaml for the format)")
    mixer = load_reward_mixer(mixer_path)
    train = load_dataset(config.dataset)
    eval_path = resolve_eval_path(config.dataset, config.eval_dataset)
    eval_set = load_dataset(eval_path) if eval_path else None
    scorer = load_scorer(config.scorer)
    # A scorer may declare which of its keys are tags/verifier signals; the rest are rewards.
    mapping = getattr(scorer, "feedback_mapping", None) or FeedbackMappingConfig()
    dist = init_distributed(config.device)
    device = resolve_device(f"cuda:{dist.local_rank}" if dist.backend == "nccl" else config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    return RunInputs(train, eval_set, scorer, mapping, mixer, device, dist)


#: below this many parameters a CPU run takes one torch thread unless --threads says otherwise
ONE_THREAD_BELOW = 20_000_000


def choose_threads(config, model, device) -> None:
    """``--threads`` unset on CPU: one thread for a small model (intra-op threads only add
    overhead to its tiny ops), torch's default for a larger one."""
    import torch

    if config.threads is None and device.type == "cpu" and sum(p.numel() for p in model.parameters()) < ONE_THREAD_BELOW:
        torch.set_num_threads(1)


def claim_run_dir(run_dir: Path, artefacts: tuple[str, ...], overwrite: bool, resumable: bool) -> bool:
    """Whether ``run_dir`` already holds a run (its log or one of ``artefacts``); refuses to go
    on unless ``overwrite`` (the caller deletes it once every input has loaded) or the caller
    resumes it. ``resumable`` adds --resume to the error's fixes. First takes the directory's
    lock (:func:`_lock`), held until :func:`release_run_dir`, the end of the command that
    claimed it (when a click command runs: its context's close), or the end of the process."""
    run_dir = Path(run_dir)
    if _lock(run_dir):
        import click

        ctx = click.get_current_context(silent=True)
        if ctx is not None:  # `train`, `eggroll`: released when the command returns or fails
            ctx.call_on_close(lambda: release_run_dir(run_dir))
    has_run = (run_dir / schema.LOG_NAME).exists() or any((run_dir / a).exists() for a in artefacts)
    if has_run and not overwrite:
        release_run_dir(run_dir)
        fixes = "pass --resume to continue it, --overwrite to replace it," if resumable else "pass --overwrite to replace it"
        raise UserError(f"{run_dir} already holds a run; {fixes} or choose another --output-dir")
    return has_run


#: The lock file inside a run directory; it holds the PID of the process that has the lock.
LOCK_NAME = ".lock"
#: run directory -> (its lock file's descriptor, whether the claim created the directory)
_held: dict[Path, tuple[int, bool]] = {}


def _lock(run_dir: Path) -> bool:
    """An exclusive ``flock`` on ``run_dir/.lock`` for this process: a second run in the same
    directory (``--resume`` twice, or ``train`` and ``eggroll``) stops with the holder's PID.
    The OS drops it when the process dies, even by SIGKILL. Under torchrun only rank 0 takes it
    (the other ranks never write there). Taken again by the same process, it is a no-op.
    Returns whether this call took it."""
    key = run_dir.resolve()
    if os.environ.get("RANK", "0") != "0" or key in _held:
        return False
    created = not run_dir.exists()
    path = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UserError(f"{run_dir} is in use by another process (PID {holder}); wait for it to end or "
                                "stop it, or choose another --output-dir") from None
            try:  # the file we locked is still the one at `path` (a releasing holder may have removed it)
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot take the run directory's lock ({exc.strerror})") from None
    _held[key] = (fd, created)
    return True


def release_run_dir(run_dir: Path) -> None:
    """Let go of :func:`claim_run_dir`'s lock; a directory the claim created and nothing else
    wrote to (a run that failed before its first record) is removed."""
    run_dir = Path(run_dir)
    fd, created = _held.pop(run_dir.resolve(), (None, False))
    if fd is None:
        return
    try:
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
            (run_dir / LOCK_NAME).unlink()
            run_dir.rmdir()
    except OSError:
        pass
    os.close(fd)


class PromptOrder:
    """Consecutive slices of a per-epoch permutation of ``examples`` seeded by
    ``mix_seed(seed, epoch, SALT_PROMPT_ORDER)``: every prompt once per epoch, and the
    prompts of step ``s`` depend only on ``(seed, s)``."""

    def __init__(self, examples: list, seed: int) -> None:
        self.examples, self.seed = examples, seed
        self._epoch, self._order = -1, []

    def take(self, step: int, size: int) -> list:
        """The ``size`` prompts of 1-based ``step``."""
        picked = []
        for k in range((step - 1) * size, step * size):
            epoch, offset = divmod(k, len(self.examples))
            if epoch != self._epoch:
                self._order = list(range(len(self.examples)))
                random.Random(mix_seed(self.seed, epoch, SALT_PROMPT_ORDER)).shuffle(self._order)
                self._epoch = epoch
            picked.append(self.examples[self._order[offset]])
        return picked


class StopSignal:
    """Within ``with``: the first Ctrl-C sets :attr:`requested` (the loop finishes its step and
    stops cleanly), a second one raises ``KeyboardInterrupt``. Outside the main thread (a
    notebook's worker, a test runner) no handler can be installed and Ctrl-C keeps its default."""

    def __init__(self, message: str) -> None:
        self.message, self.requested = message, False
        self._previous = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{self.message}", file=sys.stderr)

    def __enter__(self) -> StopSignal:
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    """The progress bar both loops show (on stderr; stdout stays for results)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def versions() -> dict:
    """The versions a run record states: rg-tracer, gepa-dapo-grn, torch, transformers, Python."""
    import gepa_dapo_grn
    import torch
    import transformers

    import rg_tracer

    return {
        "rg_tracer": rg_tracer.__version__, "gepa_dapo_grn": gepa_dapo_grn.__version__,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def run_record(config: dict, model, inputs: RunInputs, resumed_from_step: int | None, **model_extra) -> dict:
    """The fields of a ``run`` record (:func:`rg_tracer.schema.run_record`): the config,
    versions, the model (``model_extra`` adds search-specific facts), the datasets, the
    mixer's weights and, under torchrun, ``distributed: {world_size, backend}``."""
    return schema.run_record(
        distributed=inputs.dist.describe(),
        config=config, versions=versions(),
        model={"name_or_path": config["model"], "arch": type(model).__name__,
               "parameters": sum(p.numel() for p in model.parameters()), **model_extra},
        dataset={**inputs.train.describe(), "eval": inputs.eval.describe() if inputs.eval else None},
        reward_weights=dict(inputs.mixer.weights), resumed_from_step=resumed_from_step,
    )
