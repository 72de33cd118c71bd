"""verl runs as ``rg-tracer/2`` records (``READER``), so ``rg-tracer analyze`` reads them.

verl (followed: commit b178a3cd5 of volcengine/verl, ``verl/version/version`` = 0.8.0.dev, the
development line 0.9 continues; ``verl/trainer/ppo/ray_trainer.py``, ``verl/utils/tracking.py``,
``verl/trainer/ppo/metric_utils.py``, ``verl/workers/actor/dp_actor.py``) writes no run
directory of its own. What it writes locally, and where this reader looks for it in ``run_dir``:

* **Rollout dump** (``trainer.rollout_data_dir``): ``{step}.jsonl`` per training step, one line
  per sample, ``{"input", "output", "gts", "score", "step", <reward extra info>...}``
  (``RayPPOTrainer._dump_generations``). Read from ``run_dir`` itself or from its subfolder
  ``rollout``, ``rollout_data`` or ``rollouts``.
* **Validation dump** (``trainer.validation_data_dir``): the same format for each validation,
  plus ``reward``. Read from ``validation``, ``validation_data`` or ``val``; used only for an eval's
  ``n`` and ``samples``.
* **Metrics** (``trainer.logger`` including ``file``): verl's ``FileLogger`` writes one line per
  ``logger.log`` call, ``{"step": int, "data": {metric: value}}`` (orjson), to
  ``$VERL_FILE_LOGGER_PATH`` or else ``$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl``.
  Read from the one ``*.jsonl`` directly in ``run_dir`` whose first line has that shape
  (``metrics.jsonl`` in the documented layout). The ``console`` backend only prints; W&B,
  TensorBoard, MLflow, ... keep metrics elsewhere.
* **Config**: hydra's ``run_dir/.hydra/config.yaml`` when ``hydra.run.dir`` is ``run_dir``.

The documented layout (``docs/peers.md``, "verl")::

    hydra.run.dir=$RUN trainer.rollout_data_dir=$RUN/rollout trainer.validation_data_dir=$RUN/validation
    trainer.logger='[console,file]'   with   VERL_FILE_LOGGER_PATH=$RUN/metrics.jsonl

Records, in log order: one ``run``; for each step in order a ``step`` (mapped metrics in ``rl``,
``timing_s/*`` and ``timing_per_token_ms/*`` in ``timing``, the dump's samples in
``gepa``/``generation``) and then that step's ``eval`` records (one per data source; step 0 is
``val_before_train``); an ``end`` only when ``trainer.total_training_steps`` (config) was reached.
A step is converted once it is complete: with a metrics file, once its metrics line is there
(verl logs it after the dump, so later dumps are held back); without one, once its dump file
ends with a newline. Output is a pure function of the files, so a converter can append.

Problems are notes, not errors (``records(run_dir, notes)`` appends ``(path, message)``; without a
list they are :class:`VerlWarning` warnings): a corrupt dump file (bad JSON, a line without
``input``/``output``, a cut-off last line) loses its samples, and its step keeps its metrics (a
step with neither is left out); a bad metrics line is skipped. Only an ambiguous ``run_dir``
(two rollout dumps, several metrics files) raises :class:`VerlFormatError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rg_tracer.schema import (
    LOG_NAME,
    MAX_STEP,
    RL_KEYS,
    SCHEMA,
    end_record,
    eval_record,
    run_record,
    step_record,
    validate,
)

__all__ = ["READER", "VerlFormatError", "VerlWarning", "RL_NAMES", "detect", "sources", "records"]

ROLLOUT_DIRS = ("rollout", "rollout_data", "rollouts")
VALIDATION_DIRS = ("validation", "validation_data", "val")
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
#: verl metric -> rg-tracer ``rl`` name (same quantity). KL is chosen per step (:func:`_rl`).
RL_NAMES = {
    "actor/pg_loss": "policy_loss",
    "actor/entropy": "entropy",
    "actor/pg_clipfrac": "clip_ratio",
    "actor/grad_norm": "grad_norm",
    "actor/lr": "lr",
    "critic/score/mean": "reward_mixed_mean",
    "response_length/mean": "completion_length_mean",
    "response_length/min": "completion_length_min",
    "response_length/max": "completion_length_max",
    "response_length/clip_ratio": "truncated_frac",
}
#: the step number again
DROPPED = ("training/global_step",)
TIMING_PREFIXES = ("timing_s/", "timing_per_token_ms/")
#: the fields ``_dump_generations`` writes itself; every other key is reward extra info
DUMP_FIELDS = ("input", "output", "gts", "score", "step")
#: eval samples kept per split (as rg-tracer's own evals)
EVAL_SAMPLES = 8
_DUMP_NAME = re.compile(r"^(0|[1-9][0-9]{0,12})\.jsonl$")
_VAL_KEY = re.compile(r"^val-(?:core|aux)/(?P<source>.+)/(?P<var>[^/]+)/"
                      r"(?P<metric>(?:mean|std)@(?P<n>[0-9]+)|(?:best|worst|maj)@[0-9]+/(?:mean|std))$")
_FIRST_LINE_LIMIT = 16 << 20


try:  # the format registry (analysis/db/formats/__init__.py)
    from analysis.db.formats import FormatError, Reader
except ImportError:  # not there: the same shapes
    class FormatError(Exception):  # type: ignore[no-redef]
        """A run directory cannot be read in its format; the message names the file."""

        def __init__(self, path: str | Path, problem: str) -> None:
            super().__init__(f"{path}: {problem}")
            self.path, self.problem = Path(path), problem

    @dataclass(frozen=True)
    class Reader:  # type: ignore[no-redef]
        """One run format (the registry's ``Reader``)."""

        name: str
        detect: Callable[[Path], bool]
        sources: Callable[[Path], list[Path]]
        records: Callable[..., Iterator[dict]]
        describe: str = ""
        version: int = 1


class VerlFormatError(FormatError):
    """``run_dir`` cannot be read as one verl run; the message says why and what to do."""


class VerlWarning(UserWarning):
    """Part of a verl run was left out (``records`` without a ``notes`` list)."""


# -- where things are ----------------------------------------------------------------------
@dataclass
class _Layout:
    rollout: dict[int, Path] = field(default_factory=dict)
    validation: dict[int, Path] = field(default_factory=dict)
    metrics: list[Path] = field(default_factory=list)
    config: Path | None = None
    problems: list[str] = field(default_factory=list)


def _dump_files(folder: Path) -> dict[int, Path]:
    """``{step: path}`` of the ``{step}.jsonl`` files in ``folder`` (none when it is no folder)."""
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return {}
    return {int(p.name[:-6]): p for p in entries if _DUMP_NAME.match(p.name) and p.is_file()}


def _first_object(path: Path) -> Any:
    """The first non-blank line of ``path`` parsed as JSON, or None."""
    try:
        with open(path, "rb") as f:
            for _ in range(4):
                line = f.readline(_FIRST_LINE_LIMIT)
                if not line:
                    return None
                if line.strip():
                    return json.loads(line)
    except (OSError, ValueError, RecursionError):
        return None
    return None


def _is_dump_line(obj: Any) -> bool:
    return isinstance(obj, dict) and all(k in obj for k in ("input", "output", "score", "step"))


def _is_metrics_line(obj: Any) -> bool:
    return (isinstance(obj, dict) and set(obj) == {"step", "data"} and isinstance(obj["data"], dict)
            and isinstance(obj["step"], int) and not isinstance(obj["step"], bool))


def _pick_dump(run_dir: Path, folders: list[Path], what: str, layout: _Layout) -> dict[int, Path]:
    found = [(folder, files) for folder in folders if (files := _dump_files(folder))
             and _is_dump_line(_first_object(files[min(files)]))]
    if len(found) > 1:
        layout.problems.append(f"{what} step files in several folders ({', '.join(str(f) for f, _ in found)}); "
                               f"a verl run directory holds one {what}")
    return found[0][1] if found else {}


def _layout(run_dir: Path) -> _Layout:
    layout = _Layout()
    layout.rollout = _pick_dump(run_dir, [run_dir, *(run_dir / n for n in ROLLOUT_DIRS)], "rollout dump", layout)
    layout.validation = _pick_dump(run_dir, [run_dir / n for n in VALIDATION_DIRS], "validation dump", layout)
    try:
        candidates = sorted(p for p in run_dir.glob("*.jsonl")
                            if p.is_file() and not _DUMP_NAME.match(p.name) and p.name != LOG_NAME)
    except OSError:
        candidates = []
    layout.metrics = [p for p in candidates if _is_metrics_line(_first_object(p))]
    if len(layout.metrics) > 1:
        layout.problems.append(
            f"several verl metrics files ({', '.join(p.name for p in layout.metrics)}); a run directory holds one "
            "run's FileLogger output (VERL_FILE_LOGGER_PATH=<run_dir>/metrics.jsonl)")
    config = run_dir / HYDRA_CONFIG
    layout.config = config if config.is_file() else None
    return layout


def detect(run_dir: Path) -> bool:
    """A folder with a verl rollout dump or a verl ``FileLogger`` metrics file (and no rg-tracer
    ``train.jsonl`` nor TRL ``trainer_state.json``)."""
    run_dir = Path(run_dir)
    try:
        if not run_dir.is_dir() or (run_dir / LOG_NAME).exists() or (run_dir / "trainer_state.json").exists():
            return False
        layout = _layout(run_dir)
    except OSError:
        return False
    return bool(layout.rollout or layout.metrics)


def sources(run_dir: Path) -> list[Path]:
    """Every file the records are made from: config, metrics file(s), rollout and validation dumps."""
    layout = _layout(Path(run_dir))
    out = [layout.config] if layout.config else []
    out += layout.metrics
    out += [layout.rollout[s] for s in sorted(layout.rollout)]
    out += [layout.validation[s] for s in sorted(layout.validation)]
    return out


# -- reading -------------------------------------------------------------------------------
class _Notes:
    def __init__(self, notes: list | None) -> None:
        self.notes = notes

    def __call__(self, path: Path, message: str) -> None:
        if self.notes is None:
            warnings.warn(f"{path}: {message}", VerlWarning, stacklevel=3)
        else:
            self.notes.append((str(path), message))


def _number(value: Any) -> float | int | None:
    """A finite float/int (bool as 0/1), else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else float(value) if abs(value) < 1.7e308 else None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _load_config(layout: _Layout, note: _Notes) -> dict:
    if layout.config is None:
        return {}
    import yaml

    try:
        config = yaml.safe_load(layout.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        note(layout.config, f"unreadable ({str(exc).splitlines()[0]}); the run is read without its config")
        return {}
    if not isinstance(config, dict):
        note(layout.config, "not a YAML mapping; the run is read without its config")
        return {}
    return json.loads(json.dumps(config, default=str))  # dates and the like as text


def _lookup(config: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def _read_metrics(path: Path, note: _Notes) -> dict[int, dict]:
    """``{step: data}`` from complete lines (an unterminated last line is still being written);
    lines of the same step merge, the later value of a name winning."""
    out: dict[int, dict] = {}
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            note(path, f"line {number}: not JSON ({exc}); skipped")
            continue
        if not _is_metrics_line(obj) or not 0 <= obj["step"] <= MAX_STEP:
            note(path, f"line {number}: not a verl FileLogger line {{\"step\": 0..10^12, \"data\": {{...}}}}; skipped")
            continue
        out.setdefault(obj["step"], {}).update(obj["data"])
    return out


class _Corrupt(Exception):
    pass


def _read_dump(path: Path) -> list[dict]:
    """The samples of one dump file; :class:`_Corrupt` says what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Corrupt(f"unreadable ({exc})") from None
    if data and not data.endswith(b"\n"):
        raise _Corrupt("the last line is cut off (verl ends every dump with a newline)")
    samples = []
    for number, line in enumerate(data.split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise _Corrupt(f"line {number}: not JSON ({exc})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("input"), str) or not isinstance(obj.get("output"), str):
            raise _Corrupt(f"line {number}: not a verl dump line (needs string input and output)")
        samples.append(obj)
    return samples


def _prompt_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _axes(sample: dict) -> dict[str, float]:
    """Reward axes of one dump line: ``score`` and every numeric reward-extra-info key."""
    axes = {}
    for key, value in sample.items():
        if key in ("input", "output", "gts", "step"):
            continue
        number = _number(value)
        if number is not None:
            axes[key] = float(number)
    return axes


def _val_axes(line: dict) -> dict[str, float]:
    """A validation sample's axes: as training's, less ``reward`` (``_validate``'s copy of ``score``)."""
    axes = _axes(line)
    if "score" in axes:
        axes.pop("reward", None)
    return axes


def _samples(lines: list[dict]) -> tuple[list[dict], list[dict]]:
    """``gepa`` and ``generation`` lists, prompt-major (prompts in order of first appearance)."""
    by_prompt: dict[str, list[dict]] = {}
    for line in lines:
        by_prompt.setdefault(line["input"], []).append(line)
    gepa, generation = [], []
    for text, group in by_prompt.items():
        pid = _prompt_id(text)
        for k, line in enumerate(group):
            meta = {key: value for key, value in line.items()
                    if key not in DUMP_FIELDS and _number(value) is None}
            if isinstance(line.get("data_source"), str):
                meta["task_id"] = line["data_source"]
            if line.get("gts") is not None:
                meta["ground_truth"] = line["gts"]
            meta["prompt_id"] = pid
            gepa.append({"rewards": _axes(line), "tags": {}, "verifier": {}, "meta": meta, "abstained": False})
            generation.append({"prompt_id": pid, "completion_id": f"{pid}#{k}", "prompt_tokens": 0,
                               "completion_tokens": 0, "truncated": False, "completion": line["output"]})
    return gepa, generation


# -- mapping -------------------------------------------------------------------------------
@dataclass
class _StepMetrics:
    """One step's metrics line, sorted: training metrics, timing, validation means per data
    source (``{source: {var: (n, mean@n, verl name)}}``) and the other validation numbers."""

    train: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    means: dict[str, dict[str, tuple[int, float, str]]] = field(default_factory=dict)
    val_other: dict = field(default_factory=dict)


def _split_metrics(data: dict) -> _StepMetrics:
    out = _StepMetrics()
    for key, value in data.items():
        number = _number(value)
        if value is not None and number is None:
            continue  # a list, a string: no metric
        match = _VAL_KEY.match(key)
        if match and match["n"] is not None and match["metric"].startswith("mean@") and number is not None:
            var = out.means.setdefault(match["source"], {})
            n = int(match["n"])
            if match["var"] in var and n <= var[match["var"]][0]:
                out.val_other[key] = number
                continue
            if match["var"] in var:  # a mean over more samples per prompt: verl's core one
                old = var[match["var"]]
                out.val_other[old[2]] = old[1]
            var[match["var"]] = (n, float(number), key)
        elif key.startswith("val-"):
            out.val_other[key] = number
        elif key.startswith(TIMING_PREFIXES):
            out.timing[key] = number
        elif key not in DROPPED:
            out.train[key] = number
    return out


def _eval_axes(var_means: dict[str, tuple[int, float, str]]) -> tuple[dict[str, float], dict[str, float]]:
    """Eval metrics ``{axis: mean}`` and the means left out (under verl's names). verl's
    ``reward`` var is the score (``score`` axis) unless the reward function reports ``score`` too."""
    metrics, left = {}, {}
    for var, (_, mean, key) in var_means.items():
        if var == "reward":
            if "score" in var_means:
                left[key] = mean
                continue
            var = "score"
        metrics[var] = mean
    return metrics, left


def _rl(train: dict) -> dict:
    """verl's step metrics under rg-tracer's names (:data:`RL_NAMES`), the rest under verl's."""
    m = dict(train)
    rl: dict[str, Any] = {"loss": None}  # verl logs no total loss
    if "actor/kl_coef" in m:  # actor.use_kl_loss: KL(policy || ref) in the loss
        rl["kl"], rl["kl_coeff"] = m.pop("actor/kl_loss", None), m.pop("actor/kl_coef")
    elif "actor/reward_kl_penalty" in m:  # algorithm.use_kl_in_reward
        rl["kl"] = m.pop("actor/reward_kl_penalty")
        if "actor/reward_kl_penalty_coeff" in m:
            rl["kl_coeff"] = m.pop("actor/reward_kl_penalty_coeff")
    else:
        rl["kl"] = None  # no KL term (actor/kl_loss, if logged, is verl's 0.0 placeholder)
    for old, new in RL_NAMES.items():
        if old in m:
            rl[new] = m.pop(old)
    for key in RL_KEYS:
        rl.setdefault(key, None)
    rl.update(m)
    return rl


def _header(kind: str, fields: dict) -> dict:
    return {"schema": SCHEMA, "kind": kind, **fields}


def _run(config: dict) -> dict:
    model = {"name_or_path": path} if isinstance(path := _lookup(config, "actor_rollout_ref", "model", "path"),
                                                  str) else {}
    dataset = {key: value for key, value in (("path", _lookup(config, "data", "train_files")),
                                             ("eval_path", _lookup(config, "data", "val_files")))
               if value is not None}
    fields = run_record(config=config, versions={}, model=model, dataset=dataset,
                        reward_weights={"score": 1.0}, resumed_from_step=None)
    seed = _lookup(config, "data", "seed")
    fields["seed"] = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    fields["time"] = None
    return validate(_header("run", fields))


def _eval(step: int, source: str, metrics: dict, val_lines: list[dict] | None, one_source: bool) -> dict:
    n, samples = None, None
    if val_lines is not None and one_source:
        prompts: dict[str, dict] = {}
        for line in val_lines:
            prompts.setdefault(line["input"], line)
        n = len(prompts)
        samples = [{"prompt_id": _prompt_id(text), "prompt": text, "answer": line.get("gts"),
                    "completion": line["output"], "scores": _val_axes(line)}
                   for text, line in list(prompts.items())[:EVAL_SAMPLES]]
    fields = eval_record(step=step, split=source, n=n, metrics=metrics, samples=samples)
    if n is None:
        del fields["n"]  # unknown: readers read it as null (with a note)
        return validate(_header("eval", fields), [])
    return validate(_header("eval", fields))


# -- records -------------------------------------------------------------------------------
def records(run_dir: Path, notes: list | None = None) -> Iterator[dict]:
    """The run's ``rg-tracer/2`` records in log order (module docstring); ``notes`` receives
    ``(path, message)`` for each part left out (else they are :class:`VerlWarning` warnings)."""
    run_dir = Path(run_dir)
    note = _Notes(notes)
    layout = _layout(run_dir)
    if layout.problems:
        raise VerlFormatError(run_dir, "; ".join(layout.problems))
    if not layout.rollout and not layout.metrics:
        raise VerlFormatError(run_dir, "no verl rollout dump ({step}.jsonl) nor FileLogger metrics file")
    config = _load_config(layout, note)
    metrics = _read_metrics(layout.metrics[0], note) if layout.metrics else {}
    yield _run(config)

    split = {step: _split_metrics(data) for step, data in sorted(metrics.items())}
    trained = {step for step, m in split.items() if m.train or m.timing}
    if layout.metrics:
        last = max(trained, default=-1)  # later dumps: their step's metrics are not logged yet
        dumps = {s: p for s, p in layout.rollout.items() if s <= last}
    else:
        dumps = dict(layout.rollout)
        newest = max(dumps, default=None)
        if newest is not None and not _complete(dumps[newest]):
            del dumps[newest]  # still being written
    emitted = None
    for step in sorted(trained | set(dumps) | {s for s, m in split.items() if m.means}):
        m = split.get(step) or _StepMetrics()
        evals = {source: _eval_axes(var_means) for source, var_means in m.means.items()}
        if step in trained or step in dumps:
            rl = _rl(m.train)
            rl.update(m.val_other)  # validation numbers the eval records do not carry
            for _, left in evals.values():
                rl.update(left)
            gepa, generation = [], []
            if step in dumps:
                try:
                    gepa, generation = _samples(_read_dump(dumps[step]))
                except _Corrupt as exc:
                    keep = "its samples are left out" if step in trained else "the step is left out"
                    note(dumps[step], f"{exc}; {keep}")
                    if step not in trained:
                        dumps.pop(step)
            if step in trained or step in dumps:
                yield validate(_header("step", step_record(step=step, phase="rl", rl=rl, gepa=gepa,
                                                           generation=generation, timing=m.timing)))
                emitted = step
        val_lines = None
        if evals and step in layout.validation:
            try:
                val_lines = _read_dump(layout.validation[step])
            except _Corrupt as exc:
                note(layout.validation[step], f"{exc}; the eval's n and samples are left out")
        for source, (eval_metrics, _) in evals.items():
            yield _eval(step, source, eval_metrics, val_lines, len(evals) == 1)

    total = _lookup(config, "trainer", "total_training_steps")
    if (isinstance(total, int) and not isinstance(total, bool) and total > 0 and emitted is not None
            and emitted >= total):
        yield validate(_header("end", end_record(step=emitted, status="completed")))


def _complete(path: Path) -> bool:
    """A dump file verl has finished writing (it ends every dump with a newline)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        with open(path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"
    except OSError:
        return False


READER = Reader(name="verl", detect=detect, sources=sources, records=records, version=1,
                describe="a rollout dump ({step}.jsonl in run_dir or run_dir/rollout), and/or verl's FileLogger "
                         "metrics (run_dir/metrics.jsonl), with hydra's .hydra/config.yaml and validation/")
