"""The options every run shares, written once: :class:`RunOptions`, the base of both searches.

``TrainConfig`` (``rg_tracer.dapo.config``) and ``EggrollConfig`` (``rg_tracer.eggroll.config``)
extend it. Each field carries its help text and the concern it belongs to (:func:`opt`);
the CLI builds its flags from the fields and prints one ``--help`` section per concern.
Rules live in :meth:`RunOptions.rules` (a subclass adds its own) and say the value, the rule
and the fix. A subclass that needs another default says so with :func:`redefault`.

``--eval-every N`` means the same in both searches: evaluate every N steps and after the
last one; 0 never evaluates.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from rg_tracer.errors import UserError

__all__ = ["RunOptions", "opt", "redefault", "config_from_file", "flag_of"]

# Sections of --help, one per concern (the subclasses add theirs between INPUTS and SAMPLING).
INPUTS, SAMPLING, EVALUATION, RUN_DIR, MACHINE = "Inputs", "Sampling", "Evaluation", "Run directory", "Machine"


def opt(default, help: str, section: str, **extra):
    """A config field with its ``--help`` text and section, written once."""
    return field(default=default, metadata={"help": help, "section": section, **extra})


def redefault(cls, name: str, default):
    """``cls``'s field ``name`` with another default (help and section kept): a deliberate difference."""
    return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class RunOptions:
    # -- inputs --------------------------------------------------------------------------
    model: str = opt(None, "Hub name or local directory of a causal LM (build one with `rg-tracer init-model`). Required.", INPUTS)
    dataset: str = opt(None, "Training JSONL with 'prompt' and 'answer' per line (or a directory holding train.jsonl). Required.", INPUTS)
    eval_dataset: str | None = opt(None, "Held-out JSONL for --eval-every (default: <dataset stem>_test.jsonl beside it, if present).", INPUTS)
    scorer: str = opt("arithmetic", "Built-in scorer name or 'package.module:Class'.", INPUTS)
    reward_mixer: str = opt("configs/reward_mixer.yaml", "YAML/JSON of reward-axis weights that mix a completion's rewards into one scalar: the training reward (train), averaged over a member's prompts its fitness (eggroll).", INPUTS)
    # -- sampling ------------------------------------------------------------------------
    max_new_tokens: int = opt(32, "Maximum completion length in tokens.", SAMPLING)
    temperature: float = opt(1.0, "Sampling temperature of the scored completions (0: greedy; train needs > 0, eggroll's default 0 makes a member's fitness depend only on its weights).", SAMPLING)
    lean_sampler: bool = opt(True, "Sample GPT-2/Llama/Qwen2 models with rg-tracer's KV-cached loop (generate's tokens, faster); --no-lean-sampler calls model.generate, e.g. for a model with a patched forward.", SAMPLING)
    # -- evaluation ----------------------------------------------------------------------
    eval_every: int = opt(100, "Evaluate greedily on the held-out split and a train sample every N steps (generations) and after the last; train also before step 1 and after --sft-steps (0: never).", EVALUATION)
    eval_samples: int = opt(64, "Prompts per split and evaluation, greedy decoding (0: all).", EVALUATION)
    # -- the run directory ---------------------------------------------------------------
    output_dir: str = opt("runs/run", "Run directory: the log train.jsonl goes here, with checkpoints/ (train) or the final weights in model/ (eggroll).", RUN_DIR)
    seed: int = opt(42, "Base seed: the prompt order, each step's sampling and (eggroll) every perturbation derive from it.", RUN_DIR)
    overwrite: bool = opt(False, "Delete the run already in --output-dir (train.jsonl, checkpoints/ or model/) and start afresh.", RUN_DIR)
    # -- the machine ---------------------------------------------------------------------
    device: str = opt("auto", "torch device: auto, cpu, cuda, cuda:1, mps.", MACHINE)
    threads: int | None = opt(None, "torch CPU threads (1 is fastest for tiny models on few cores).", MACHINE)
    trust_remote_code: bool = opt(False, "Allow model code from the hub to run (only for models you trust).", MACHINE)
    progress: bool = opt(True, "Show a progress bar.", MACHINE)

    #: --help sections in the order shown.
    SECTIONS: ClassVar[tuple[str, ...]] = (INPUTS, SAMPLING, EVALUATION, RUN_DIR, MACHINE)
    #: Options a resumed run may change: they do not change the trajectory of the weights.
    RESUME_MAY_DIFFER: ClassVar[tuple[str, ...]] = (
        "eval_dataset", "lean_sampler", "eval_every", "eval_samples", "output_dir", "overwrite",
        "device", "threads", "trust_remote_code", "progress",
    )
    #: Options a resumed run can never change (its checkpoint's state was built with them).
    RESUME_FIXED: ClassVar[tuple[str, ...]] = ()

    def rules(self) -> list[tuple[bool, str]]:
        """``(holds, message)`` per rule; a subclass returns ``super().rules() + [...]``."""
        return [
            (bool(self.model), "--model is required: a hub name or a directory from `rg-tracer init-model`"),
            (bool(self.dataset), "--dataset is required: a JSONL file with 'prompt' and 'answer' per line"),
            (self.max_new_tokens >= 1, f"--max-new-tokens {self.max_new_tokens} must be >= 1"),
            (math.isfinite(self.temperature) and self.temperature >= 0,
             f"--temperature {self.temperature} must be a finite number >= 0 (0: greedy)"),
            (self.eval_every >= 0, f"--eval-every {self.eval_every} must be >= 0 (0: never evaluate)"),
            (self.eval_samples >= 0, f"--eval-samples {self.eval_samples} must be >= 0"),
            (self.threads is None or self.threads >= 1, f"--threads {self.threads} must be >= 1"),
        ]

    def __post_init__(self) -> None:
        for ok, message in self.rules():
            if not ok:
                raise UserError(message)

    def evaluates_at(self, step: int, last: bool) -> bool:
        """``--eval-every N``: after every N-th step and after the last one; 0: never."""
        return self.eval_every > 0 and (step % self.eval_every == 0 or last)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str, **overrides):
        """Options from a YAML file (field names as keys), then ``overrides`` on top."""
        return config_from_file(cls, path, **overrides)

    # -- resume ---------------------------------------------------------------------------
    def changes_since(self, saved: dict) -> list[tuple[str, Any, Any]]:
        """``(name, then, now)`` for every option outside :attr:`RESUME_MAY_DIFFER` whose value
        differs from ``saved`` (a checkpoint's stored config). An option the checkpoint does not
        name was added later: the run used its default. Saved values are normalised as the
        config normalises them (``0.9, 0.98`` equals ``0.9,0.98``)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        checked = [n for n in fields if n not in self.RESUME_MAY_DIFFER]
        then = {n: saved.get(n, fields[n].default) for n in checked}
        try:
            normalised = dataclasses.replace(self, **then)
            then = {n: getattr(normalised, n) for n in checked}
        except (UserError, TypeError, ValueError):  # a value today's rules refuse: compare it as stored
            pass
        return [(n, then[n], getattr(self, n)) for n in checked if then[n] != getattr(self, n)]

    def check_resume(self, saved: dict, allow_changes: bool = False) -> None:
        """Refuse to resume with options that change the trajectory, unless ``allow_changes``;
        options in :attr:`RESUME_FIXED` are refused even then. One line names every difference."""
        changed = self.changes_since(saved)
        fixed = [c for c in changed if c[0] in self.RESUME_FIXED]
        if not changed or (allow_changes and not fixed):
            return
        listed = ", ".join(f"{flag_of(n)} {now!r} differs from the checkpoint's {then!r}" for n, then, now in changed)
        if fixed:
            fix = ("resume with " + " ".join(f"{flag_of(n)} {then!r}" for n, then, _ in fixed)
                   + f" (the optimizer state was built with {'it' if len(fixed) == 1 else 'them'}"
                   + ("; pass the others as saved or add --resume-with-changes" if len(fixed) < len(changed) else "")
                   + ") or start a new run (--overwrite)")
        else:
            fix = ("pass the checkpoint's values to continue the same run, or add --resume-with-changes "
                   "to continue with the new ones")
        raise UserError(f"--resume: {listed}; {fix}")


def config_from_file(cls, path: str, **overrides):
    """``cls`` built from a YAML file (field names as keys), with ``overrides`` on top."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option -> value")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise UserError(f"--config {path}: unknown option {key!r}; options are the long flags with '_' for '-'")
    try:
        return cls(**{**data, **overrides})
    except TypeError as exc:
        raise UserError(f"--config {path}: {exc}") from None
