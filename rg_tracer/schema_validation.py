"""The reader's and the writer's checks of one ``rg-tracer/2`` record, kind by kind.

:func:`rg_tracer.schema.validate` upgrades a record and hands it to :data:`_VALIDATORS` here.
The rules live apart from :mod:`rg_tracer.schema` (the contract: names, record builders,
:func:`~rg_tracer.schema.upgrade`, :func:`~rg_tracer.schema.supersede`) because they are most of
its length: what a writer must write (``notes is None``: any gap raises
:class:`~rg_tracer.schema.SchemaError`) and what a lenient reader reads with a default and notes
(``notes`` a list). Like the contract, this module imports neither torch nor duckdb; it imports
the contract's names, and :mod:`rg_tracer.schema` imports it only inside ``validate``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rg_tracer.schema import (
    ES_KEYS, GENERATION_KEYS, MAX_COUNT, MAX_STEP, PHASES, RL_KEYS, SAMPLE_KEYS, SchemaError,
)


def _short(value: Any) -> str:
    """``repr(value)``, cut to fit a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> bool:
    """A JSON number a 64-bit float holds (an integer of 400 digits is a JSON number, but no float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) <= _FLOAT_MAX
    return isinstance(value, float)


_FLOAT_MAX = 1.7976931348623157e308


def _number_map(value: Any, field: str) -> None:
    if not isinstance(value, dict):
        raise SchemaError(field, f"expected an object of numbers, got {type(value).__name__}")
    for key, number in value.items():
        if not _number(number):
            raise SchemaError(f"{field}.{key}", f"expected a number (within float range), got {_short(number)}")


_BOUNDS = {MAX_STEP: "10^12", MAX_COUNT: "2^63-1"}


def _int(value: Any, field: str, minimum: int = 0, maximum: int = MAX_STEP) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise SchemaError(field, f"expected an integer from {minimum} to {_BOUNDS.get(maximum, maximum)}, "
                                 f"got {_short(value)}")


def _optional(record: dict, key: str, ok, default: Any, notes: list | None, field: str | None = None) -> None:
    """Keep ``record[key]`` if ``ok(value)``; else a reader reads ``default`` and notes it, a writer's check fails."""
    value = record.get(key)
    if key in record and ok(value):
        return
    field = field or key
    problem = "missing" if key not in record else f"expected {ok.__doc__}, got {_short(value)}"
    if notes is None:
        raise SchemaError(field, problem)
    notes.append((field, f"{problem}; read as {json.dumps(default)}"))
    record[key] = default


def _object(value: Any) -> bool:
    """an object"""
    return isinstance(value, dict)


def _boolean(value: Any) -> bool:
    """true or false"""
    return isinstance(value, bool)


def _number_or_null(value: Any) -> bool:
    """a finite number or null"""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) <= MAX_COUNT
    return value is None or (isinstance(value, float) and math.isfinite(value))


def _int64_or_null(value: Any) -> bool:
    """an integer or null"""
    return value is None or (not isinstance(value, bool) and isinstance(value, int)
                             and -MAX_COUNT - 1 <= value <= MAX_COUNT)


def _count_or_null(value: Any) -> bool:
    """an integer from 0 to 2^63-1 or null"""
    return value is None or (not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_COUNT)


def _weights_or_null(value: Any) -> bool:
    """an object of numbers or null"""
    return value is None or (isinstance(value, dict) and all(_number(v) for v in value.values()))


def _validate_step(record: dict, notes: list | None) -> None:
    _int(record.get("step"), "step")
    phase = record.get("phase", "rl")
    if phase not in PHASES:
        raise SchemaError("phase", f"expected one of {', '.join(PHASES)}, got {_short(phase)}")
    rl = record.get("rl")
    if not isinstance(rl, dict):
        raise SchemaError("rl", "expected an object")
    for key in RL_KEYS if phase != "es" else ():
        if key not in rl:
            if notes is None:
                raise SchemaError(f"rl.{key}", "missing")
            notes.append((f"rl.{key}", "missing; read as a missing metric (null)"))
    for key, value in rl.items():
        if value is not None and not _number(value):
            raise SchemaError(f"rl.{key}", f"expected a number (within float range) or null, got {_short(value)}")
    if phase == "es":
        es = record.get("es")
        if not isinstance(es, dict):
            raise SchemaError("es", "expected an object (an ES step's fitness statistics)")
        for key in ES_KEYS:
            value = es.get(key)
            if not _number(value):
                raise SchemaError(f"es.{key}", f"expected a number (within float range), got {_short(value)}")
    gepa = record.get("gepa")
    generation = record.get("generation")
    if not isinstance(gepa, list) or not isinstance(generation, list):
        raise SchemaError("gepa", "gepa and generation must be lists")
    if len(generation) != len(gepa):
        raise SchemaError(
            "generation", f"has {len(generation)} entries but gepa has {len(gepa)}"
        )
    for i, sample in enumerate(gepa):
        where = f"gepa[{i}]"
        if not isinstance(sample, dict):
            raise SchemaError(where, "expected an object")
        if "rewards" not in sample:
            raise SchemaError(f"{where}.rewards", "missing")
        missing = [key for key in SAMPLE_KEYS if key not in sample]
        if missing:
            if notes is None:
                raise SchemaError(f"{where}.{missing[0]}", "missing")
            gepa[i] = sample = dict(sample)
            for key in missing:
                _optional(sample, key, _boolean if key == "abstained" else _object,
                          False if key == "abstained" else {}, notes, f"{where}.{key}")
        for key in ("rewards", "tags", "verifier"):
            _number_map(sample[key], f"{where}.{key}")
        if not isinstance(sample["abstained"], bool):
            raise SchemaError(f"{where}.abstained", "expected true or false")
    for i, gen in enumerate(generation):
        where = f"generation[{i}]"
        if not isinstance(gen, dict):
            raise SchemaError(where, "expected an object")
        for key in GENERATION_KEYS:
            if key not in gen:
                raise SchemaError(f"{where}.{key}", "missing")
        _int(gen["prompt_tokens"], f"{where}.prompt_tokens", maximum=MAX_COUNT)
        _int(gen["completion_tokens"], f"{where}.completion_tokens", maximum=MAX_COUNT)
        if not isinstance(gen["completion"], str):
            raise SchemaError(f"{where}.completion", "expected a string")


def _validate_eval(record: dict, notes: list | None) -> None:
    _int(record.get("step"), "step")
    if not isinstance(record.get("split"), str) or not record["split"]:
        raise SchemaError("split", "expected a non-empty string")
    if "n" in record or notes is None:
        _int(record.get("n"), "n", maximum=MAX_COUNT)
    else:
        _optional(record, "n", _count_or_null, None, notes)
    _number_map(record.get("metrics"), "metrics")


def _validate_run(record: dict, notes: list | None) -> None:
    for key in ("config", "versions", "model", "dataset"):
        _optional(record, key, _object, {}, notes)
    if notes is not None:  # what the writer always writes, but the analysis can do without
        _optional(record, "time", _number_or_null, None, notes)
        _optional(record, "seed", _int64_or_null, None, notes)
        _optional(record, "reward_weights", _weights_or_null, None, notes)
    resumed = record.get("resumed_from_step")
    if resumed is not None:  # it decides which earlier records survive: never guessed
        _int(resumed, "resumed_from_step")


def _validate_end(record: dict, notes: list | None) -> None:
    _int(record.get("step"), "step")
    if record.get("status") not in ("completed", "interrupted"):
        raise SchemaError("status", "expected 'completed' or 'interrupted'")


_VALIDATORS = {
    "run": _validate_run,
    "step": _validate_step,
    "eval": _validate_eval,
    "end": _validate_end,
}
