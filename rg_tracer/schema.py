"""The one definition of the rg-tracer JSONL log format (``rg-tracer/1``).

The trainer's writer and the analysis ingester both import this module, so the
format lives in exactly one place. It imports neither torch nor duckdb: the
analysis half must load without torch.

A log is one JSON object per line. Every record carries ``"schema"`` and
``"kind"``:

``run``   first line of every (re)started training segment: ``config``,
          ``versions``, ``model``, ``dataset``, ``seed``, ``resumed_from_step``.
``step``  one optimisation step: ``step``, ``phase`` (``rl``, or ``sft`` for supervised
          warm-up steps, whose ``gepa``/``generation`` are empty and whose
          policy_loss/kl/clip_ratio are null), ``rl`` (always :data:`RL_KEYS`),
          ``gepa`` (per sample), ``generation`` (per sample, aligned with
          ``gepa``), ``curriculum``, ``safety``, ``timing``.
``eval``  held-out evaluation: ``step``, ``split``, ``n``, ``metrics``.
``end``   last line of a segment that finished or was interrupted cleanly.

Records written by the upstream project (no ``schema``/``kind``, shaped
``{step, rl, gepa, generation, curriculum, safety}``) are upgraded to ``step``
records by :func:`upgrade`. ``docs/log_schema.md`` is the prose version.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LOG_NAME",
    "SCHEMA",
    "KINDS",
    "RL_KEYS",
    "SAMPLE_KEYS",
    "GENERATION_KEYS",
    "SchemaError",
    "upgrade",
    "validate",
    "supersede",
]

SCHEMA = "rg-tracer/1"
#: the file name of a run's log inside its run directory
LOG_NAME = "train.jsonl"
KINDS = ("run", "step", "eval", "end")

#: Keys every ``step`` record's ``rl`` object carries (``None`` never; NaN is
#: written as ``null`` only when a metric could not be computed).
RL_KEYS = ("loss", "policy_loss", "kl", "clip_ratio", "lr", "grad_norm")

SAMPLE_KEYS = ("rewards", "tags", "verifier", "meta", "abstained")
GENERATION_KEYS = (
    "prompt_id",
    "completion_id",
    "prompt_tokens",
    "completion_tokens",
    "truncated",
    "completion",
)


class SchemaError(ValueError):
    """A record does not follow ``rg-tracer/1``; ``field`` names the offending path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def upgrade(record: Any) -> dict:
    """Return ``record`` as an ``rg-tracer/1`` record.

    Records without ``schema`` but shaped like the upstream project's step
    records become ``step`` records; per-sample ``verifier`` defaults to ``{}``.
    Raises :class:`SchemaError` for anything else.
    """
    if not isinstance(record, dict):
        raise SchemaError("<record>", f"expected a JSON object, got {type(record).__name__}")
    schema = record.get("schema")
    if schema == SCHEMA:
        return record
    if schema is not None:
        raise SchemaError("schema", f"unknown schema {schema!r}; this version reads {SCHEMA!r}")
    if "step" in record and ("gepa" in record or "rl" in record):
        upgraded = dict(record)
        upgraded["schema"] = SCHEMA
        upgraded["kind"] = "step"
        upgraded.setdefault("rl", {})
        upgraded["gepa"] = [
            {**{"verifier": {}, "tags": {}, "meta": {}, "abstained": False}, **s}
            if isinstance(s, dict)
            else s
            for s in record.get("gepa") or []
        ]
        upgraded.setdefault("generation", [])
        return upgraded
    raise SchemaError("schema", "missing; not an rg-tracer record nor an upstream step record")


def _number_map(value: Any, field: str) -> None:
    if not isinstance(value, dict):
        raise SchemaError(field, f"expected an object of numbers, got {type(value).__name__}")
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise SchemaError(f"{field}.{key}", f"expected a number, got {number!r}")


def _int(value: Any, field: str, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SchemaError(field, f"expected an integer >= {minimum}, got {value!r}")


def _validate_step(record: dict) -> None:
    _int(record.get("step"), "step")
    rl = record.get("rl")
    if not isinstance(rl, dict):
        raise SchemaError("rl", "expected an object")
    for key in RL_KEYS:
        if key not in rl:
            raise SchemaError(f"rl.{key}", "missing")
    for key, value in rl.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SchemaError(f"rl.{key}", f"expected a number or null, got {value!r}")
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
        for key in SAMPLE_KEYS:
            if key not in sample:
                raise SchemaError(f"{where}.{key}", "missing")
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
        _int(gen["prompt_tokens"], f"{where}.prompt_tokens")
        _int(gen["completion_tokens"], f"{where}.completion_tokens")
        if not isinstance(gen["completion"], str):
            raise SchemaError(f"{where}.completion", "expected a string")


def _validate_eval(record: dict) -> None:
    _int(record.get("step"), "step")
    if not isinstance(record.get("split"), str) or not record["split"]:
        raise SchemaError("split", "expected a non-empty string")
    _int(record.get("n"), "n")
    _number_map(record.get("metrics"), "metrics")


def _validate_run(record: dict) -> None:
    for key in ("config", "versions", "model", "dataset"):
        if not isinstance(record.get(key), dict):
            raise SchemaError(key, "expected an object")
    resumed = record.get("resumed_from_step")
    if resumed is not None:
        _int(resumed, "resumed_from_step")


def _validate_end(record: dict) -> None:
    _int(record.get("step"), "step")
    if record.get("status") not in ("completed", "interrupted"):
        raise SchemaError("status", "expected 'completed' or 'interrupted'")


_VALIDATORS = {
    "run": _validate_run,
    "step": _validate_step,
    "eval": _validate_eval,
    "end": _validate_end,
}


def validate(record: Any) -> dict:
    """Upgrade and check one record; return it or raise :class:`SchemaError`."""
    record = upgrade(record)
    kind = record.get("kind")
    if kind not in _VALIDATORS:
        raise SchemaError("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    _VALIDATORS[kind](record)
    return record


def supersede(records: list[dict]) -> list[dict]:
    """Drop ``step``/``eval`` records that a later ``--resume`` segment replaced.

    A ``run`` record with ``resumed_from_step = k`` means the run restarted from its
    checkpoint at step ``k``: records of earlier segments with ``step > k`` were
    written after that checkpoint and are superseded by the new segment's.
    """
    kept: list[dict] = []
    for record in records:
        resumed = record.get("resumed_from_step") if record.get("kind") == "run" else None
        if resumed is not None:
            kept = [r for r in kept if r.get("kind") not in ("step", "eval", "end") or r["step"] <= resumed]
        kept.append(record)
    return kept
