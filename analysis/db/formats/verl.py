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

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from analysis.db.formats.verl_layout import _complete, _is_metrics_line, _layout, _Layout
from analysis.db.formats.verl_metrics import (
    RL_NAMES,
    _Corrupt,
    _eval,
    _eval_axes,
    _header,
    _lookup,
    _read_dump,
    _rl,
    _run,
    _samples,
    _split_metrics,
    _StepMetrics,
)
from rg_tracer.schema import LOG_NAME, MAX_STEP, end_record, step_record, validate

__all__ = ["READER", "VerlFormatError", "VerlWarning", "RL_NAMES", "detect", "sources", "records"]


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


READER = Reader(name="verl", detect=detect, sources=sources, records=records, version=1,
                describe="a rollout dump ({step}.jsonl in run_dir or run_dir/rollout), and/or verl's FileLogger "
                         "metrics (run_dir/metrics.jsonl), with hydra's .hydra/config.yaml and validation/")
