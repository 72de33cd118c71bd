"""Decide from DuckDB's ``json_structure`` which lines the SQL fast path may load.

``json_structure(line)`` costs one parse and tells, per line, every key and the
JSON type of every value (merged across list elements). A line whose shape
is a well-typed ``step`` record goes to SQL; anything else (run/eval/end
records, wrong types, malformed lines) goes to the Python path, which
validates it with :func:`rg_tracer.schema.validate` and reports the problem.

Three things the merged shape cannot show are checked elsewhere: a ``null``
axis value mixed with numbers (a ``contains(line, 'null')`` probe plus
``json_type``), a key written twice in one object (``json_keys``: DuckDB keeps
the first, Python's ``json`` the last, so those lines take the Python path) and
a key missing from one sample only (NULL checks in SQL). An ``rl`` without
some of :data:`~rg_tracer.schema.RL_KEYS` is loaded (those metrics are null) and noted.
An all-empty axis object (``"verifier": {}``) has shape ``"JSON"``, the same as
a type conflict; those lines are checked in SQL to hold only ``{}`` there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from rg_tracer.schema import ES_KEYS, GENERATION_KEYS, RL_KEYS, SAMPLE_KEYS, UPSTREAM_NAMES

__all__ = ["AXIS_FIELDS", "StepShape", "step_shape", "struct_ok"]

#: record field -> ``sample_axes.kind``
AXIS_FIELDS = {"rewards": "reward", "tags": "tag", "verifier": "verifier"}
_NUMBER = {"UBIGINT", "BIGINT", "DOUBLE"}


@dataclass
class StepShape:
    """Keys of a group of lines that the fast path can load."""

    upstream: bool
    rl_keys: list[str]
    es_keys: list[str] = field(default_factory=list)  # an ES step's numeric ``es`` fields
    axis_keys: dict[str, list[str]] = field(default_factory=dict)  # field -> keys
    ambiguous: set[str] = field(default_factory=set)  # fields shaped "JSON"
    missing_rl: list[str] = field(default_factory=list)  # RL_KEYS an RL/SFT step lacks (noted, read as null)


def _number_map(shape: object) -> list[str] | None:
    if isinstance(shape, dict) and all(t in _NUMBER for t in shape.values()):
        return list(shape)
    return None


def _element(shape: object) -> object:
    """The merged element shape of a list (``"NULL"`` for an empty list)."""
    if isinstance(shape, list) and len(shape) == 1:
        return shape[0]
    return None


def _sample_shape(sample: object, upstream: bool, out: StepShape) -> bool:
    if sample == "NULL":  # empty gepa list
        return True
    if not isinstance(sample, dict):
        return False
    required = ("rewards",) if upstream else SAMPLE_KEYS
    if any(key not in sample for key in required):
        return False
    for name in AXIS_FIELDS:
        value = sample.get(name)
        if value is None:  # missing: upstream default {}
            out.axis_keys[name] = []
        elif value == "JSON":
            out.axis_keys[name] = []
            out.ambiguous.add(name)
        else:
            keys = _number_map(value)
            if keys is None:
                return False
            out.axis_keys[name] = keys
    return sample.get("abstained", "BOOLEAN") == "BOOLEAN"


def _generation_shape(gen: object) -> bool:
    if gen == "NULL":
        return True
    return (
        isinstance(gen, dict)
        and all(key in gen for key in GENERATION_KEYS)
        and gen["prompt_tokens"] == "UBIGINT"
        and gen["completion_tokens"] == "UBIGINT"
        and gen["completion"] == "VARCHAR"
    )


def step_shape(structure: str) -> StepShape | None:
    """Return the keys if ``structure`` is a loadable step record, else ``None``."""
    try:
        st = json.loads(structure)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply for Python (the Python path says so)
        return None
    if not isinstance(st, dict):
        return None
    upstream = "schema" not in st and "kind" not in st
    if not upstream and (st.get("schema") != "VARCHAR" or st.get("kind") != "VARCHAR"):
        return None
    if st.get("step") != "UBIGINT" or "gepa" not in st or "generation" not in st:
        return None
    rl, es = st.get("rl"), st.get("es")
    if not isinstance(rl, dict) or any(t not in _NUMBER and t != "NULL" for t in rl.values()):
        return None
    if upstream and any(key in UPSTREAM_NAMES for key in rl):
        return None  # upstream's metric names: the Python path maps them, and its lines rejoin SQL
    missing_rl: list[str] = []
    if es is None:  # an RL or SFT step ("phase" may mix in one group: checked in SQL)
        missing_rl = [key for key in RL_KEYS if key not in rl]
        es_keys = []
    else:  # an ES step
        if not isinstance(es, dict) or any(not isinstance(es.get(key), str) or es[key] not in _NUMBER for key in ES_KEYS):
            return None
        es_keys = [key for key, t in es.items() if isinstance(t, str) and t in _NUMBER]
    sample, gen = _element(st["gepa"]), _element(st["generation"])
    if (sample == "NULL") != (gen == "NULL"):
        return None
    out = StepShape(upstream=upstream, rl_keys=list(rl), es_keys=es_keys, missing_rl=missing_rl)
    if not _sample_shape(sample, upstream, out) or not _generation_shape(gen):
        return None
    for name in AXIS_FIELDS:
        out.axis_keys.setdefault(name, [])
    return out


def struct_ok(keys: list[str]) -> bool:
    """Can ``keys`` be DuckDB STRUCT fields? (non-empty, unique ignoring case)"""
    folded = [key.casefold() for key in keys]
    return all(folded) and len(set(folded)) == len(folded)
