"""The output directory of TRL's ``GRPOTrainer`` (trl 1.16) as ``rg-tracer/2`` records.

What TRL keeps on disk (``docs/peers.md``, section TRL, has the table of metric names):

* ``checkpoint-<N>/trainer_state.json`` (every ``save_steps``) and ``trainer_state.json`` in the
  output directory (only when the script calls ``trainer.save_state()``): ``log_history``, one
  entry per ``logging_steps`` with the step's metrics (``eval_*`` entries for evaluations). Steps
  after the newest of them are on disk nowhere (TRL logs them to the console and ``report_to``).
* ``completions/completions_<step>.parquet`` (only with ``GRPOConfig(log_completions=True)``):
  at each logging step, the last generation batch: ``step, prompt, completion``, one column per
  reward function, the ``log_extra`` columns and ``advantage``. At a step with an evaluation the
  file is overwritten by the evaluation's completions (TRL logs both under the same name).
* ``training_args.bin``: the ``GRPOConfig``, a torch pickle, read here without torch by an
  unpickler that builds no object but plain containers (:func:`_training_args`).
* ``tokenizer.json`` (with each checkpoint, and with ``save_model``): counts the tokens of the
  logged completions, which the parquet files do not hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from analysis.db.formats import FormatError, Reader, note, record
from analysis.db.formats.trl_args import read_training_args
from analysis.db.formats.trl_metrics import RENAMED, _PER_FUNC, _entries, _eval, _number, _reward_weights, _rl, _steps
from analysis.db.formats.trl_samples import TOKENIZER, _completion_files, _Samples
from rg_tracer.schema import end_record, run_record, step_record

__all__ = ["READER", "RENAMED", "read_training_args"]

STATE = "trainer_state.json"
ARGS = "training_args.bin"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_SNIFF_BYTES = 8192


# -- finding the files ---------------------------------------------------------------
def _checkpoints(run_dir: Path) -> list[Path]:
    """``checkpoint-<N>`` directories, newest first."""
    found = []
    try:
        for p in Path(run_dir).iterdir():
            m = _CHECKPOINT.fullmatch(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    except OSError:
        return []
    return [p for _, p in sorted(found, reverse=True)]


def _is_state(path: Path) -> bool:
    """A Hugging Face ``TrainerState`` file (its keys are sorted: ``global_step`` comes early)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    return b'"global_step"' in head or b'"log_history"' in head


def detect(run_dir: Path) -> bool:
    """``trainer_state.json`` (a Hugging Face TrainerState), ``checkpoint-<N>/trainer_state.json``
    or ``completions/completions_<step>.parquet``."""
    run_dir = Path(run_dir)
    if _is_state(run_dir / STATE):
        return True
    if any((ck / STATE).is_file() for ck in _checkpoints(run_dir)):
        return True
    return bool(_completion_files(run_dir))


def sources(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    files = [run_dir / name for name in (STATE, ARGS, TOKENIZER, "README.md")]
    for ck in _checkpoints(run_dir):
        files += [ck / STATE, ck / ARGS, ck / TOKENIZER]
    files += [p for _, p in _completion_files(run_dir)]
    return [p for p in files if p.is_file()]


# -- reading the run -------------------------------------------------------------------
def _load_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ValueError("not a Hugging Face trainer state (no log_history list)")
    return state


def _state(run_dir: Path) -> tuple[dict | None, Path | None]:
    """The newest readable trainer state (most steps; the output directory's wins a tie), noting
    every corrupt one met on the way. Raises :class:`FormatError` when there were state files and
    none could be read and there are no completions to fall back on."""
    candidates = [run_dir / STATE] + [ck / STATE for ck in _checkpoints(run_dir)]
    candidates = [p for p in candidates if p.is_file()]
    best: tuple[dict, Path] | None = None
    bad: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            state = _load_state(path)
        except ValueError as exc:
            bad.append((path, str(exc)))
            continue
        step = state.get("global_step") if isinstance(state.get("global_step"), int) else -1
        if best is None or step > (best[0].get("global_step") or -1):
            best = (state, path)
        if path.parent != run_dir:  # checkpoints are newest first: the first readable one is enough
            break
    if best is None:
        if bad and not _completion_files(run_dir):
            path, problem = bad[0]
            raise FormatError(path, f"{problem}; no other trainer_state.json could be read, so the run was not read")
        for path, problem in bad:
            note(f"{path}: {problem}; the run's per-step metrics are unknown")
        return None, None
    for path, problem in bad:
        note(f"{path}: {problem}; metrics read from {best[1]} instead")
    return best


def _args(run_dir: Path, state_path: Path | None) -> dict:
    near = [state_path.parent / ARGS] if state_path is not None else []
    for path in [*near, run_dir / ARGS, *(ck / ARGS for ck in _checkpoints(run_dir))]:
        if path.is_file():
            try:
                return read_training_args(path)
            except (OSError, ValueError) as exc:
                note(f"{path}: {exc}; the run's configuration (reward weights, beta, length limit) is unknown")
                return {}
    note(f"{run_dir}: no {ARGS}; the run's configuration (reward weights, beta, length limit) is unknown")
    return {}


def _tokenizer(run_dir: Path, state_path: Path | None):
    paths = ([state_path.parent / TOKENIZER] if state_path is not None else []) + [run_dir / TOKENIZER] + [
        ck / TOKENIZER for ck in _checkpoints(run_dir)]
    for path in paths:
        if path.is_file():
            try:
                from tokenizers import Tokenizer

                return Tokenizer.from_file(str(path))
            except Exception as exc:  # ImportError, or a file tokenizers cannot read
                note(f"{path}: cannot be loaded ({type(exc).__name__}: {exc}); token counts written as 0")
                return None
    return None


def _versions(run_dir: Path) -> dict:
    """From the model card's "Framework versions" (``- TRL: 1.16.0``)."""
    try:
        text = (run_dir / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    names = {"trl": "trl", "transformers": "transformers", "pytorch": "torch", "datasets": "datasets",
             "tokenizers": "tokenizers"}
    out = {}
    for m in re.finditer(r"^- ([A-Za-z]+): (\S+)\s*$", text, re.M):
        key = names.get(m.group(1).lower())
        if key:
            out[key] = m.group(2)
    return out


def _model(run_dir: Path, state_path: Path | None) -> dict:
    model: dict = {}
    try:
        card = (run_dir / "README.md").read_text(encoding="utf-8", errors="replace")
        m = re.search(r"fine-tuned version of \[([^\]]+)\]", card)
        if m and m.group(1) != "None":
            model["name_or_path"] = m.group(1)
    except OSError:
        pass
    for folder in ([state_path.parent] if state_path is not None else []) + [run_dir]:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            arch = config.get("model_type")
            model["arch"] = arch if isinstance(arch, str) else None
            break
    return model


def records(run_dir: Path) -> Iterator[dict]:
    run_dir = Path(run_dir)
    state, state_path = _state(run_dir)
    args = _args(run_dir, state_path)
    train, evals, summary = _entries(state)
    names = sorted({m.group(1) for e in [*train.values(), *evals.values()] for k in e
                    if (m := _PER_FUNC.fullmatch(k.removeprefix("eval_")))})
    samples = _Samples(run_dir, names, evals, _tokenizer(run_dir, state_path), args, train)
    # The reward functions' order (for reward_weights) shows in the first completions file's columns.
    steps = sorted(set(train) | set(samples.files))
    read = {}
    if steps and samples.files:
        first = min(samples.files)
        read[first] = samples.read(first)
    if state is None:
        config: dict = dict(args)
    else:
        config = {k: state.get(k) for k in ("max_steps", "num_train_epochs", "logging_steps", "save_steps",
                                            "eval_steps", "train_batch_size") if k in state}
        config.update(args)
    names = names or (samples.order or [])
    yield record("run", time=None, **run_record(
        config=config, versions=_versions(run_dir), model=_model(run_dir, state_path), dataset={},
        reward_weights=_reward_weights(args, names, samples.order, run_dir), resumed_from_step=None))
    if not samples.files:
        note(f"{run_dir}: no per-sample completions (TRL writes completions/completions_<step>.parquet only with "
             "GRPOConfig(log_completions=True)); the reward functions are step means, RL metrics "
             "reward_mean/<func>, not reward axes")
    no_metrics = []
    for step in steps:
        entry = train.get(step)
        if entry is None:
            no_metrics.append(step)
        gepa, generation = read.pop(step) if step in read else samples.read(step)
        timing = {"step": entry["step_time"]} if entry and _number(entry.get("step_time")) else {}
        yield record("step", **step_record(step=step, phase="rl", rl=_rl(entry or {}, args), gepa=gepa,
                                           generation=generation, timing=timing))
        if step in evals:
            yield from _eval(step, evals.pop(step))
    for step in sorted(evals):  # evaluations at a step without a train entry
        yield from _eval(step, evals[step])
    samples.finish()
    if no_metrics and state is not None:
        note(f"{state_path}: log_history ends at step {max(train, default=0)}; step(s) {_steps(no_metrics)} have "
             "completions but no metrics (TRL writes log_history with each checkpoint, and with trainer.save_state())")
    elif state is None and steps:
        note(f"{run_dir}: no readable {STATE} (TRL writes it to checkpoint-<N>/ every save_steps, and to the output "
             "directory with trainer.save_state()); the steps have completions but no metrics")
    global_step = (state or {}).get("global_step")
    max_steps = (state or {}).get("max_steps")
    if summary is not None or (isinstance(global_step, int) and isinstance(max_steps, int)
                               and 0 < max_steps <= global_step):
        yield record("end", **end_record(step=max(steps, default=global_step or 0), status="completed"))


READER = Reader(name="trl", detect=detect, sources=sources, records=records,
                describe="a TRL GRPOTrainer output_dir: checkpoint-<N>/trainer_state.json, trainer_state.json or "
                         "completions/completions_<step>.parquet",
                version=1)
