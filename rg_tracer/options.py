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
import functools
import math
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from rg_tracer.errors import UserError

__all__ = ["RunOptions", "opt", "redefault", "config_from_file", "flag_of", "base_type", "load_option_yaml",
           "MIN_TEMPERATURE", "SEED_LIMIT"]

#: Below this (and above 0), logits / T overflow float32 or sample greedily anyway: use 0 for greedy.
MIN_TEMPERATURE = 1e-3
#: torch seeds (``torch.manual_seed``) are 64-bit, and ``mix_seed`` folds every seed to 64 bits.
SEED_LIMIT = 2**64
#: An option file is a short mapping; a larger file is not one.
MAX_CONFIG_BYTES = 1 << 20

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


def base_type(hint):
    """``int`` for ``int | None``: the type a field holds when it is set."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict[str, tuple[type, bool]]:
    """``name -> (base type, None allowed)`` for every field of a config class."""
    hints = typing.get_type_hints(cls)
    return {f.name: (base_type(hints[f.name]), type(None) in typing.get_args(hints[f.name]) or f.default is None)
            for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class RunOptions:
    # -- inputs --------------------------------------------------------------------------
    model: str = opt(None, "Hub name or local directory of a causal LM (build one with `rg-tracer init-model`). Required.", INPUTS)
    dataset: str = opt(None, "Training JSONL with 'prompt' and 'answer' per line (or a directory holding train.jsonl). Required.", INPUTS)
    eval_dataset: str | None = opt(None, "Held-out JSONL for --eval-every (default: <dataset stem>_test.jsonl beside it, if present).", INPUTS)
    scorer: str = opt("arithmetic", "Built-in scorer (arithmetic; reasoning-gym, for datasets from `rg-tracer data reasoning-gym`) or 'package.module:Class'.", INPUTS)
    reward_mixer: str = opt("configs/reward_mixer.yaml", "YAML/JSON of reward-axis weights that mix a completion's rewards into one scalar: the training reward (train), averaged over a member's prompts its fitness (eggroll). The default is also shipped in the package, so it works outside the repository.", INPUTS)
    # -- sampling ------------------------------------------------------------------------
    max_new_tokens: int = opt(32, "Maximum completion length in tokens.", SAMPLING)
    temperature: float = opt(1.0, "Sampling temperature of the scored completions (0: greedy; train needs > 0, eggroll's default 0 makes a member's fitness depend only on its weights).", SAMPLING)
    lean_sampler: bool = opt(True, "Sample GPT-2/Llama/Qwen2 models with rg-tracer's KV-cached loop (generate's tokens, faster); --no-lean-sampler calls model.generate, e.g. for a model with a patched forward.", SAMPLING)
    # -- evaluation ----------------------------------------------------------------------
    eval_every: int = opt(100, "Evaluate greedily on the held-out split and a train sample every N steps (generations) and after the last; train also before step 1 and after --sft-steps (0: never).", EVALUATION)
    eval_samples: int = opt(64, "Prompts per split and evaluation, greedy decoding (0: all).", EVALUATION)
    # -- the run directory ---------------------------------------------------------------
    output_dir: str = opt("runs/run", "Run directory: the log train.jsonl goes here, with checkpoints/ (train) or the final weights in model/ (eggroll).", RUN_DIR)
    seed: int = opt(42, "Base seed: the prompt order, each step's sampling and (eggroll) every perturbation derive from it. It does not touch the model's weights: a random initialisation is `rg-tracer init-model --seed`'s, so full-batch supervised runs of one model are identical whatever --seed says.", RUN_DIR)
    overwrite: bool = opt(False, "Delete the run already in --output-dir (train.jsonl, checkpoints/ or model/) and start afresh.", RUN_DIR)
    # -- the machine ---------------------------------------------------------------------
    device: str = opt("auto", "torch device: auto, cpu, cuda, cuda:1, mps.", MACHINE)
    dtype: str = opt("auto", "Compute dtype: auto (the model's saved dtype), float32, bfloat16 or float16. Half precision runs forward passes under torch.autocast and keeps fp32 master weights and optimizer state, unless --pure-dtype (docs/models.md).", MACHINE,
                     metavar="[auto|float32|bfloat16|float16]")
    pure_dtype: bool = opt(False, "Keep the weights (and AdamW's state) in --dtype itself instead of fp32 masters: half the memory, but an update smaller than the dtype's resolution is lost (a bf16 weight near 1.0 ignores changes below 0.004).", MACHINE)
    cpu_gemm: str = opt("auto", "Kernels of float32 linear layers on a CPU: onednn (PyTorch's oneDNN), aten (torch's default BLAS, MKL in the PyPI wheels) or auto (onednn on x86 CPUs not made by Intel, where MKL's float32 products ran at half oneDNN's speed on an AMD EPYC; aten elsewhere, Intel included: not measured there). The results agree to float rounding (docs/performance.md).", MACHINE,
                        metavar="[auto|onednn|aten]")
    threads: int | None = opt(None, "torch CPU threads. Default: 1 on CPU for models under 20M parameters, whose ops are too small to share across threads (measured on 2 busy cores: the demo's 137k-parameter model took 14x the CPU time per step with 2 threads), else torch's default. The 20M bound is not measured: on 2 cores a 25M model still took 2.1x the CPU time with 2 threads, so pass --threads 1 there.", MACHINE)
    trust_remote_code: bool = opt(False, "Allow model code from the hub to run (only for models you trust).", MACHINE)
    progress: bool = opt(True, "Show a progress bar.", MACHINE)

    #: --help sections in the order shown.
    SECTIONS: ClassVar[tuple[str, ...]] = (INPUTS, SAMPLING, EVALUATION, RUN_DIR, MACHINE)
    #: Options a resumed run may change: they do not change the trajectory of the weights.
    RESUME_MAY_DIFFER: ClassVar[tuple[str, ...]] = (
        "eval_dataset", "lean_sampler", "eval_every", "eval_samples", "output_dir", "overwrite",
        "device", "cpu_gemm", "threads", "trust_remote_code", "progress",
    )
    #: Values of --dtype (auto: the model's saved dtype).
    DTYPES: ClassVar[tuple[str, ...]] = ("auto", "float32", "bfloat16", "float16")
    #: Values of --cpu-gemm.
    CPU_GEMMS: ClassVar[tuple[str, ...]] = ("auto", "onednn", "aten")
    #: Options a resumed run can never change (its checkpoint's state was built with them).
    RESUME_FIXED: ClassVar[tuple[str, ...]] = ()
    #: Float options where inf has a meaning; every other float option must be finite. Their
    #: own rule refuses NaN (and says what inf means).
    MAY_BE_INFINITE: ClassVar[tuple[str, ...]] = ()
    #: String options that a YAML file may give as a list (their parser accepts one).
    LIST_OPTIONS: ClassVar[tuple[str, ...]] = ()

    def rules(self) -> list[tuple[bool, str]]:
        """``(holds, message)`` per rule; a subclass returns ``super().rules() + [...]``."""
        return self._finite_rules() + [
            (bool(self.model), "--model is required: a hub name or a directory from `rg-tracer init-model`"),
            (bool(self.dataset), "--dataset is required: a JSONL file with 'prompt' and 'answer' per line"),
            (self.max_new_tokens >= 1, f"--max-new-tokens {self.max_new_tokens} must be >= 1"),
            (math.isfinite(self.temperature) and self.temperature >= 0,
             f"--temperature {self.temperature} must be a finite number >= 0 (0: greedy)"),
            (self.temperature == 0 or self.temperature >= MIN_TEMPERATURE,
             f"--temperature {self.temperature} must be 0 (greedy) or at least {MIN_TEMPERATURE}: sampling "
             "divides the logits by it, and a smaller one overflows (or samples greedily anyway)"),
            (0 <= self.seed < SEED_LIMIT, f"--seed {self.seed} must be in [0, 2**64): torch seeds are 64-bit"),
            (self.eval_every >= 0, f"--eval-every {self.eval_every} must be >= 0 (0: never evaluate)"),
            (self.eval_samples >= 0, f"--eval-samples {self.eval_samples} must be >= 0"),
            (self.threads is None or self.threads >= 1, f"--threads {self.threads} must be >= 1"),
            (self.dtype in self.DTYPES, f"--dtype {self.dtype!r} is not one of {', '.join(self.DTYPES)}"),
            (self.cpu_gemm in self.CPU_GEMMS, f"--cpu-gemm {self.cpu_gemm!r} is not one of {', '.join(self.CPU_GEMMS)}"),
            (not self.pure_dtype or self.dtype not in ("float32",),
             "--pure-dtype keeps the weights in --dtype; with --dtype float32 it changes nothing: pass --dtype "
             "bfloat16 (or drop --pure-dtype)"),
        ]

    def _finite_rules(self) -> list[tuple[bool, str]]:
        """Every float option is a finite number, but those in :attr:`MAY_BE_INFINITE`."""
        return [(value is None or math.isfinite(value), f"{flag_of(name)} {value} must be a finite number")
                for name, (kind, _) in _field_types(type(self)).items()
                if kind is float and name not in self.MAY_BE_INFINITE for value in [getattr(self, name)]]

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


def load_option_yaml(path: str, what: str):
    """The YAML document in ``path``, read safely: at most 1 MiB, no aliases (``*name``: an option
    file has no use for them, and nested aliases are how a "billion laughs" document expands
    into gigabytes), errors as one line naming ``what`` (e.g. ``--config FILE``) and the line."""
    import yaml

    class _NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(problem="aliases (*name) are not allowed; write the value out",
                                           problem_mark=mark)
            return super().compose_node(parent, index)

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise UserError(f"{what}: larger than {MAX_CONFIG_BYTES >> 20} MiB; an option file is a short mapping")
        return yaml.load(raw.decode("utf-8"), Loader=_NoAliases)
    except OSError as exc:
        raise UserError(f"{what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what}: not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
    except RecursionError:
        raise UserError(f"{what}: nested too deeply; an option file is a flat mapping of option -> value") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4300)
        raise UserError(f"{what}: a number has too many digits ({str(exc).split(':')[0]})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{what}:{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what}: {str(exc).splitlines()[0]}") from None


_TYPE_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}


def _coerce(name: str, value, kind: type, nullable: bool, list_ok: bool, where: str):
    """``value`` as a ``kind`` field holds it; a :class:`UserError` naming the file and field if it is not one."""
    def refuse(fix: str):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise UserError(f"{where}: {name}: {shown} is not {_TYPE_WORDS[kind]}; {fix}")

    if value is None:
        if nullable:
            return None
        refuse(f"give a value or leave {name} out for its default")
    if isinstance(value, (list, dict)) and not (list_ok and isinstance(value, list)):
        refuse(f"{name} takes a single value, not a {'list' if isinstance(value, list) else 'mapping'}")
    if kind is bool:
        if not isinstance(value, bool):
            refuse(f"write {name}: true or {name}: false")
        return value
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str) and len(value) < 100:
            try:
                return int(value)
            except ValueError:
                pass
        refuse(f"write a whole number such as {name}: 4")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        refuse(f"write a number such as {name}: 1.0e-3")
    if isinstance(value, list):
        if any(isinstance(v, (list, dict)) for v in value):
            refuse(f"{name} takes a list of plain values or one comma-separated string")
        return value
    if not isinstance(value, str):
        refuse(f"quote it: {name}: '{value}'")
    return value


def config_from_file(cls, path: str, **overrides):
    """``cls`` built from a YAML file (field names as keys), with ``overrides`` on top; every
    value is checked against its field's type (booleans are not numbers; numbers written as
    strings, such as YAML's ``1e-3``, are numbers) with an error naming the file and field."""
    where = f"--config {path}"
    data = load_option_yaml(path, where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of option -> value, got {type(data).__name__}")
    types = _field_types(cls)
    for key in data:
        if key not in types:
            raise UserError(f"{where}: unknown option {key!r}; options are the long flags with '_' for '-'")
    values = {key: _coerce(key, value, *types[key], key in cls.LIST_OPTIONS, where) for key, value in data.items()}
    try:
        return cls(**{**values, **overrides})
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from None
