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

import hashlib
import io
import json
import math
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from analysis.db.formats import FormatError, Reader, note, record
from rg_tracer.schema import RL_KEYS, end_record, eval_record, run_record, step_record

__all__ = ["READER", "RENAMED", "read_training_args"]

STATE = "trainer_state.json"
ARGS = "training_args.bin"
TOKENIZER = "tokenizer.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_COMPLETIONS = re.compile(r"completions_(\d+)\.parquet")
_MAX_ARGS_BYTES = 16 << 20
_SNIFF_BYTES = 8192

#: TRL ``log_history`` names of the quantities rg-tracer logs under its own name (``rl``).
RENAMED = {
    "loss": "loss",
    "policy_loss": "policy_loss",
    "kl": "kl",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "entropy": "entropy",
    "reward": "reward_mixed_mean",
    "reward_std": "reward_mixed_std",
    "completions/mean_length": "completion_length_mean",
    "completions/min_length": "completion_length_min",
    "completions/max_length": "completion_length_max",
    "completions/clipped_ratio": "truncated_frac",
}
#: TRL's ``rewards/<func>/mean`` and ``/std`` become ``reward_mean/<func>`` and ``reward_std/<func>``.
_PER_FUNC = re.compile(r"rewards/(.+)/(mean|std)")
#: Not step metrics: the step number, its wall time (into ``timing``), the closing summary.
_NOT_METRICS = {"step", "step_time"}
_SUMMARY = ("train_runtime", "train_loss", "train_samples_per_second", "train_steps_per_second", "total_flos")


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


def _completion_files(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / "completions"
    try:
        names = list(folder.iterdir())
    except OSError:
        return []
    found = [(int(m.group(1)), p) for p in names if (m := _COMPLETIONS.fullmatch(p.name))]
    return sorted(found)


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


# -- training_args.bin without torch ---------------------------------------------------
class _Opaque:
    """Stands for any object of the pickle: no code of the pickled class runs."""

    def __init__(self, *args: object) -> None:
        self.args = args
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


_CONTAINERS = {"set": set, "frozenset": frozenset, "list": list, "tuple": tuple, "dict": dict}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - only containers and stand-ins
        if module == "builtins" and name in _CONTAINERS:
            return _CONTAINERS[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "copyreg" and name == "_reconstructor":
            return lambda cls, base, state=None: cls()
        return type(name, (_Opaque,), {"module": module})

    def persistent_load(self, pid: object) -> None:  # a tensor's storage: not needed
        return None


def _plain(value: object, depth: int = 0) -> object:
    """JSON-able form of an unpickled value: an enum member becomes its value, another object
    its fields (or its class name)."""
    if depth > 20:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, _Opaque):
        if isinstance(value.state, dict):
            return _plain(value.state, depth + 1)
        if len(value.args) == 1:
            return _plain(value.args[0], depth + 1)
        return f"<{type(value).__name__}>"
    return str(value)


def read_training_args(path: Path) -> dict:
    """The ``GRPOConfig`` saved in ``training_args.bin`` as a dict of plain values.

    The file is a torch zip archive around a pickle. No class of the pickle is imported or run:
    every object comes back as its fields. Raises ``ValueError`` for a file that is not one.
    """
    path = Path(path)
    if path.stat().st_size > _MAX_ARGS_BYTES:
        raise ValueError(f"larger than {_MAX_ARGS_BYTES >> 20} MiB; not a training_args.bin")
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            if not names:
                raise ValueError("no data.pkl inside")
            data = z.read(names[0])
    except zipfile.BadZipFile:
        data = path.read_bytes()  # an old, non-zip torch.save
    try:
        value = _Unpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any malformed pickle
        raise ValueError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    plain = _plain(value)
    if not isinstance(plain, dict):
        raise ValueError("does not hold a training configuration")
    # As TrainingArguments.to_dict does: a Hub token is a secret, never copied into a log.
    return {k: (f"<{k.upper()}>" if k.endswith("_token") and v is not None else v) for k, v in plain.items()}


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


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _entries(state: dict | None) -> tuple[dict[int, dict], dict[int, dict], dict | None]:
    """``log_history`` as train entries by step, eval entries by step, and the closing summary."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    summary = None
    for entry in (state or {}).get("log_history") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int) or entry["step"] < 0:
            continue
        if any(k in entry for k in _SUMMARY):
            summary = entry
        elif any(k.startswith("eval_") for k in entry):
            evals.setdefault(entry["step"], {}).update(entry)
        else:
            train.setdefault(entry["step"], {}).update(entry)
    return train, evals, summary


def _rl(entry: dict, args: dict) -> dict:
    """One log entry's metrics under rg-tracer's names (``docs/peers.md``)."""
    rl: dict = {key: None for key in RL_KEYS}  # TRL logs no clip_ratio of rg-tracer's meaning
    per_group = args.get("scale_rewards") in ("group", "none") and args.get(
        "multi_objective_aggregation", "sum_then_normalize") == "sum_then_normalize"
    for key, value in entry.items():
        if key in _NOT_METRICS or not (_number(value) or value is None):
            continue
        m = _PER_FUNC.fullmatch(key)
        if m:
            name = f"reward_{m.group(2)}/{m.group(1)}"
        elif key == "frac_reward_zero_std" and per_group:
            name = "zero_std_group_frac"  # the share of groups whose rewards were all equal
        else:
            name = RENAMED.get(key, key)
        rl[name] = value
    if _number(args.get("beta")):
        rl["kl_coeff"] = args["beta"]
        if args["beta"] == 0:
            rl["kl"] = None  # not computed (TRL skips the reference model)
    return rl


def _text(value: object) -> str:
    """A prompt or completion: a string, or a conversation (a list of messages) as its contents."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for message in value:
            content = message.get("content") if isinstance(message, dict) else message
            if isinstance(content, list):  # multimodal parts: keep the text ones
                content = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            parts.append("" if content is None else str(content))
        return "\n".join(parts)
    return "" if value is None else str(value)


def _prompt_id(prompt: object) -> str:
    key = json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
    return "p" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


class _Samples:
    """The completions files of a run, one step at a time."""

    def __init__(self, run_dir: Path, reward_names: list[str], evals: dict[int, dict], tokenizer, args: dict,
                 train: dict[int, dict]) -> None:
        self.run_dir, self.reward_names, self.tokenizer, self.args, self.train = (
            run_dir, reward_names, tokenizer, args, train)
        self.files = dict(_completion_files(run_dir))
        overwritten = sorted(s for s in self.files if s in evals)
        for s in overwritten:
            del self.files[s]
        if overwritten:
            note(f"{run_dir / 'completions'}: the completions of step(s) {_steps(overwritten)} were overwritten by "
                 "TRL's evaluation at the same step (it logs both to completions_<step>.parquet): those steps "
                 "have metrics only")
        self.order: list[str] | None = None  # reward columns in the trainer's order (parquet column order)
        self._previous: list | None = None
        self.repeated: list[int] = []
        self.guessed = False
        self.no_tokens = False
        self.unknown_truncation: list[int] = []
        self.approximate: list[int] = []

    def read(self, step: int) -> tuple[list[dict], list[dict]]:
        path = self.files.get(step)
        if path is None:
            return [], []
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        except Exception as exc:  # ArrowInvalid and friends: a corrupt or truncated file
            note(f"{path}: not a readable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                 f"the samples of step {step} are left out")
            return [], []
        columns = table.column_names
        missing = [c for c in ("prompt", "completion") if c not in columns]
        if missing:
            note(f"{path}: no {' or '.join(missing)} column; not TRL completions, left out")
            return [], []
        rows = table.to_pylist()
        key = [(r.get("prompt"), r.get("completion"), r.get("advantage")) for r in rows]
        if key == self._previous:  # TRL re-logs the last batch when no new one was generated
            self.repeated.append(step)
            return [], []
        self._previous = key
        rewards = self._reward_columns(table)
        if self.order is None:
            self.order = rewards
        extras = [c for c in columns if c not in ("step", "prompt", "completion", "advantage", *rewards)]
        return self._samples(step, rows, rewards, extras)

    def _reward_columns(self, table) -> list[str]:
        import pyarrow.types as pt

        if self.reward_names:
            return [c for c in table.column_names if c in self.reward_names]
        self.guessed = True  # no log_history: every float column but advantage is a reward function
        return [f.name for f in table.schema if pt.is_floating(f.type) and f.name not in ("advantage", "step")]

    def _samples(self, step: int, rows: list[dict], rewards: list[str], extras: list[str]):
        prompts = [_text(r.get("prompt")) for r in rows]
        completions = [_text(r.get("completion")) for r in rows]
        if self.tokenizer is not None:
            p_tokens = [len(e.ids) for e in self.tokenizer.encode_batch(prompts, add_special_tokens=False)]
            c_tokens = [len(e.ids) for e in self.tokenizer.encode_batch(completions, add_special_tokens=False)]
        else:
            self.no_tokens = True
            p_tokens = c_tokens = [0] * len(rows)
        truncated = self._truncated(step, c_tokens)
        seen: dict[str, int] = {}
        gepa, generation = [], []
        for i, row in enumerate(rows):
            pid = _prompt_id(row.get("prompt"))
            k = seen[pid] = seen.get(pid, -1) + 1
            tags, meta = {}, {"prompt_id": pid}
            for c in extras:
                v = row.get(c)
                if _number(v) and math.isfinite(v):
                    tags[c] = float(v)
                elif v is not None and not _number(v):
                    meta[c] = v if isinstance(v, (str, bool)) else json.dumps(v, default=str, ensure_ascii=False)
            if _number(row.get("advantage")) and math.isfinite(row["advantage"]):
                meta["advantage"] = float(row["advantage"])
            gepa.append({"rewards": {c: float(row[c]) for c in rewards
                                     if _number(row.get(c)) and math.isfinite(row[c])},  # None/NaN: not applied
                         "tags": tags, "verifier": {}, "meta": meta, "abstained": False})
            generation.append({"prompt_id": pid, "completion_id": f"{pid}#{k}", "prompt_tokens": p_tokens[i],
                               "completion_tokens": c_tokens[i], "truncated": truncated[i],
                               "completion": completions[i]})
        return gepa, generation

    def _truncated(self, step: int, c_tokens: list[int]) -> list[bool]:
        """Exact from TRL's ``completions/clipped_ratio`` when it is 0 or 1; else a completion
        whose re-counted tokens reach ``max_completion_length``."""
        clipped = self.train.get(step, {}).get("completions/clipped_ratio")
        if clipped == 0 or clipped == 1:
            return [bool(clipped)] * len(c_tokens)
        limit = self.args.get("max_completion_length")
        if isinstance(limit, int) and self.tokenizer is not None:
            truncated = [n >= limit for n in c_tokens]
            if _number(clipped) and abs(sum(truncated) - clipped * len(c_tokens)) > 0.5:
                self.approximate.append(step)
            return truncated
        self.unknown_truncation.append(step)
        return [False] * len(c_tokens)

    def finish(self) -> None:
        run_dir = self.run_dir
        if self.repeated:
            note(f"{run_dir / 'completions'}: step(s) {_steps(self.repeated)} repeat the previous step's completions "
                 "(TRL logs its last generation batch again when none was generated in between: "
                 "num_iterations or steps_per_generation > 1); kept once, at the first step")
        if self.guessed and self.order:
            note(f"{run_dir}: no log_history to name the reward functions; the completions' number columns "
                 f"{', '.join(self.order)} were taken for them")
        if self.no_tokens:
            note(f"{run_dir}: no {TOKENIZER} in the run directory or its checkpoints; the samples' prompt and "
                 "completion token counts are written as 0 (unknown)")
        if self.approximate:
            note(f"{run_dir}: at step(s) {_steps(self.approximate)} the completions' re-counted tokens disagree with "
                 "TRL's completions/clipped_ratio (decoding drops special tokens the model generated), so which "
                 "samples hit max_completion_length is approximate there; the metric truncated_frac is TRL's own")
        if self.unknown_truncation:
            note(f"{run_dir}: which completions hit the length limit is unknown at step(s) "
                 f"{_steps(self.unknown_truncation)} (no max_completion_length or tokenizer); marked not truncated")


def _steps(steps: list[int]) -> str:
    """``1-3, 7`` for [1, 2, 3, 7]."""
    out, run = [], []
    for s in sorted(steps):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def _reward_weights(args: dict, names: list[str], order: list[str] | None, run_dir: Path) -> dict | None:
    if not args or not names:
        return None
    weights = args.get("reward_weights")
    if weights is None:
        return {name: 1.0 for name in names}  # TRL: every reward function weighs 1.0 unless given
    if not isinstance(weights, list) or not all(_number(w) for w in weights) or len(weights) != len(names):
        note(f"{run_dir}: reward_weights {weights!r} do not match the {len(names)} reward functions; left unknown")
        return None
    if order is None and len(set(weights)) > 1:
        note(f"{run_dir}: reward_weights {weights} follow the reward functions' order, which only the "
             "completions files show (log_completions=False); left unknown")
        return None
    return {name: float(w) for name, w in zip(order or names, weights)}


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


def _eval(step: int, entry: dict) -> Iterator[dict]:
    metrics = {m.group(1): v for k, v in entry.items()
               if (m := _PER_FUNC.fullmatch(k.removeprefix("eval_"))) and m.group(2) == "mean" and _number(v)}
    if not metrics:
        return
    fields = eval_record(step=step, split="eval", n=0, metrics=metrics)
    del fields["n"]  # TRL does not log how many prompts it evaluated: the loader reads n as unknown
    yield record("eval", **fields)


READER = Reader(name="trl", detect=detect, sources=sources, records=records,
                describe="a TRL GRPOTrainer output_dir: checkpoint-<N>/trainer_state.json, trainer_state.json or "
                         "completions/completions_<step>.parquet",
                version=1)
