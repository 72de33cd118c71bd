"""The SQL fast path: DuckDB parses a chunk of step lines and fills the tables.

Why this shape: a step line is ~8 KB of JSON with 16 samples; ``json.loads``
per line in Python costs more than DuckDB's whole load. Lines go to DuckDB as
an Arrow string column (zero copy, exact line numbers), ``json_structure``
finds the keys and types (:mod:`._shape`), and ``json_transform`` to STRUCTs
with those keys parses each line once per target table. Axis and metric
names reach SQL only as bound parameters (``struct_extract(s, $n)``).

Checks that the shape cannot make are SQL ``error()`` calls; any error aborts
the chunk's transaction and the caller retries it on the Python path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

from analysis.db._shape import AXIS_FIELDS, StepShape, step_shape, struct_ok
from analysis.logfiles import Chunk
from rg_tracer.schema import MAX_STEP, SCHEMA

__all__ = [
    "Classified",
    "lines_table",
    "extra_lines",
    "batched",
    "classify",
    "key_set",
    "stage_steps",
    "insert_step_rows",
]

_BATCH_ROWS = 128  # Arrow batches DuckDB can scan on several threads


def lines_table(chunk: Chunk) -> pa.Table:
    """``(ln, line)`` for the chunk's lines (blank lines dropped), zero copy."""
    n = chunk.n_lines
    strings = pa.LargeStringArray.from_buffers(n, pa.py_buffer(chunk.offsets), pa.py_buffer(chunk.data))
    strings.validate(full=True)  # UTF-8; raises pa.ArrowInvalid
    lns = np.arange(chunk.first_line, chunk.first_line + n, dtype=np.int64)
    table = pa.table({"ln": lns, "line": strings})
    mask = np.diff(chunk.offsets) > 1
    if not mask.all():
        table = table.filter(pa.array(mask))
    return table


def extra_lines(rows: list[tuple[int, str]]) -> pa.Table:
    return pa.table(
        {"ln": pa.array([r[0] for r in rows], pa.int64()), "line": pa.array([r[1] for r in rows], pa.large_string())}
    )


def batched(table: pa.Table) -> pa.Table:
    return pa.Table.from_batches(table.to_batches(max_chunksize=_BATCH_ROWS), schema=table.schema)


@dataclass
class Classified:
    """Lines the fast path takes (with the union of their keys) and the rest."""

    fast_lns: list[int] = field(default_factory=list)
    python_lns: list[int] = field(default_factory=list)
    rl_keys: list[str] = field(default_factory=list)
    es_keys: list[str] = field(default_factory=list)
    axis_keys: dict[str, list[str]] = field(default_factory=lambda: {f: [] for f in AXIS_FIELDS})
    missing_rl: list[tuple[str, list[int]]] = field(default_factory=list)  # (RL key, fast lines without it)


def _union(into: list[str], keys: list[str]) -> None:
    seen = set(into)
    into.extend(k for k in keys if k not in seen and not seen.add(k))


def classify(con: duckdb.DuckDBPyConnection, view: str,
             checked: set[int] | frozenset[int] = frozenset()) -> Classified:
    """Split the lines of ``view`` into fast and Python lines (raises on bad JSON).

    ``checked``: lines the Python path has validated and written back: step-shaped, they are not
    suspects (their text may still look like one, e.g. ``1e+300``).
    """
    groups = con.execute(
        f"""SELECT st, list(ln), max(n) FROM (SELECT ln, json_structure(line) AS st,
                                                     json_array_length(line, '$.gepa') AS n FROM {view})
            GROUP BY st"""
    ).fetchall()
    out = Classified()
    shapes: list[tuple[StepShape, list[int]]] = []
    most = 0  # samples in the largest step line
    for structure, lns, n in groups:
        shape = step_shape(structure)
        if shape is None:
            out.python_lns.extend(lns)
        else:
            shapes.append((shape, lns))
            most = max(most, n or 0)
    suspect = set(_suspect_lines(con, view, shapes))
    suspect.update(_duplicate_keys(con, view, shapes, most))
    suspect -= checked
    for shape, lns in shapes:
        _union(out.rl_keys, shape.rl_keys)
        _union(out.es_keys, shape.es_keys)
        for name in AXIS_FIELDS:
            _union(out.axis_keys[name], shape.axis_keys[name])
        for ln in lns:
            (out.python_lns if ln in suspect else out.fast_lns).append(ln)
        fast = [ln for ln in lns if ln not in suspect]
        if fast:
            out.missing_rl += [(key, fast) for key in shape.missing_rl]
    out.fast_lns.sort()
    out.python_lns.sort()
    return out


def _suspect_lines(con, view: str, shapes: list[tuple[StepShape, list[int]]]) -> list[int]:
    """Step-shaped lines with a null axis value, an axis object shaped ``"JSON"``, or a number
    written with an exponent of 300 or more (``1e400`` parses as infinity: the Python path
    refuses it, wherever it is)."""
    if not shapes:
        return []
    nulls = " OR ".join(f"list_contains(json_type(line, '$.gepa[*].{f}.*'), 'NULL')" for f in AXIS_FIELDS)
    found = con.execute(
        f"""SELECT list(ln) FROM {view} WHERE (contains(line, 'null') AND ({nulls}))
                                           OR regexp_matches(line, '[eE]\\+?([3-9][0-9][0-9]|[0-9]{4})')"""
    ).fetchall()[0][0]
    found = list(found or [])
    for name in AXIS_FIELDS:
        lns = [ln for shape, group in shapes if name in shape.ambiguous for ln in group]
        if not lns:
            continue
        # Shape "JSON" with no keys: fine only if every sample's object is {} (no conflict).
        con.register("_ambiguous", pa.table({"ln": pa.array(lns, pa.int64())}))
        bad = con.execute(
            f"""SELECT list(ln) FROM {view} WHERE ln IN (SELECT ln FROM _ambiguous)
                AND len(list_filter(json_extract(line, '$.gepa[*].{name}'), lambda v: v::VARCHAR != '{{}}')) > 0"""
        ).fetchall()[0][0]
        found.extend(bad or [])
    return found


#: Objects whose keys SQL reads, per sample (``$.gepa[i]``...) and per line.
_SAMPLE_OBJECTS = ("", ".rewards", ".tags", ".verifier", ".meta")


def _duplicate_keys(con, view: str, shapes: list[tuple[StepShape, list[int]]], most: int) -> list[int]:
    """Step-shaped lines with a key written twice in one object SQL reads.

    DuckDB's ``json_transform`` keeps the first of two equal keys, Python's ``json`` (and so
    the Python path) the last: those lines take the Python path. ``json_keys`` with a list of
    paths parses each line once; wildcards are not allowed there, so sample paths are listed
    up to the chunk's largest sample count, ``most``. (This costs about a third of the fast path's
    time; the cheaper checks tried, counts of keys per line, miss a repeated key in one sample
    when another sample lacks it.)
    """
    if not shapes:
        return []
    paths = ["$", "$.rl", "$.es"] + [f"$.{name}[{i}]{part}" for i in range(most)
                                     for name, parts in (("gepa", _SAMPLE_OBJECTS), ("generation", ("",)))
                                     for part in parts]
    found = con.execute(
        f"""SELECT list(ln) FROM {view} WHERE list_bool_or(list_transform(json_keys(line, $1),
                lambda k: len(k) > 1 AND len(k) != len(list_distinct(k))))""", [paths]
    ).fetchall()[0][0]
    return list(found or [])


class _Params:
    """Numbered SQL parameters, so log-derived names never enter SQL text."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def __call__(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _values(expr: str, keys: list[str], p: _Params) -> tuple[object, list[str]]:
    """(json_transform type, SQL terms) reading ``keys`` of one key/value object.

    A STRUCT is ~3x faster to build than a MAP, but DuckDB struct fields must
    be non-empty and unique ignoring case; other key sets use a MAP.
    """
    if not keys:
        return "JSON", []  # still tells a missing object (NULL) from {}
    if struct_ok(keys):
        return {k: "DOUBLE" for k in keys}, [f"struct_extract({expr}, {p(k)})" for k in keys]
    return "MAP(VARCHAR, DOUBLE)", [f"map_extract_value({expr}, {p(k)})" for k in keys]


def _checked(values: str, message: str) -> str:
    bad = f"len(list_filter({values}, lambda x: NOT isfinite(x))) > 0"
    return f"CASE WHEN {bad} THEN error('{message}') ELSE {values} END"


def key_set(con: duckdb.DuckDBPyConnection, pairs: list[tuple[str, str]]) -> int | None:
    """Id in ``_key_sets`` of the ordered (kind, name) list, created if new."""
    if not pairs:
        return None
    kinds, names = [k for k, _ in pairs], [n for _, n in pairs]
    found = con.execute(
        """SELECT set_id FROM (SELECT set_id, list(kind ORDER BY pos) AS kinds, list(name ORDER BY pos) AS names
                               FROM _key_sets GROUP BY set_id) WHERE kinds = $1 AND names = $2""",
        [kinds, names],
    ).fetchall()
    if found:
        return found[0][0]
    set_id = con.execute("SELECT coalesce(max(set_id), 0) + 1 FROM _key_sets").fetchall()[0][0]
    con.execute(
        """INSERT INTO _key_sets
           SELECT $1, unnest(range(len($2::VARCHAR[]))), unnest($2::VARCHAR[]), unnest($3::VARCHAR[])""",
        [set_id, kinds, names],
    )
    return set_id


def stage_steps(con: duckdb.DuckDBPyConnection, cls: Classified) -> tuple[np.ndarray, np.ndarray]:
    """Parse step, time, rl, ... of every ``_fast`` line into ``_st``; return (lines, steps).

    Raises ``duckdb.Error`` if a line is not a step record after all.
    """
    p = _Params(None)
    rl_type, terms = _values("r.rl", cls.rl_keys, p)
    shape = {"schema": "VARCHAR", "kind": "VARCHAR", "step": "BIGINT", "time": "DOUBLE", "rl": rl_type,
             "curriculum": "JSON", "safety": "JSON", "timing": "JSON", "phase": "VARCHAR"}
    has_es = "false"
    if cls.es_keys:  # an ES step's statistics join its metrics as es/<name> (null in RL steps)
        shape["es"], es_terms = _values("r.es", cls.es_keys, p)
        terms += es_terms
        has_es = "r.es IS NOT NULL"
    p.values[0] = json.dumps(shape)
    values = "[" + ", ".join(terms) + "]::DOUBLE[]"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _st AS
            SELECT ln, r.schema AS schema, r.kind AS kind, r.step AS step, r.time AS time,
                   r.curriculum AS curriculum, r.safety AS safety, r.timing AS timing,
                   coalesce(r.phase, 'rl') AS phase, {has_es} AS has_es,
                   {_checked("v", "non-finite rl value")} AS rl_values
            FROM (SELECT ln, r, {values} AS v FROM (SELECT ln, json_transform(line, $1) AS r FROM _fast))""",
        p.values,
    )
    # what the Python path refuses (schema.validate): then the chunk takes the Python path, which says why
    con.execute(
        """SELECT CASE WHEN count(*) > 0 THEN error('not a step record') END FROM _st
           WHERE step IS NULL OR step < 0 OR step > $2 OR NOT ((schema = $1 AND kind = 'step')
                                                               OR (schema IS NULL AND kind IS NULL))
              OR phase NOT IN ('rl', 'sft', 'es') OR (phase = 'es' AND NOT has_es)""",
        [SCHEMA, MAX_STEP]
    ).fetchall()
    rows = con.execute("SELECT ln, step FROM _st ORDER BY ln").fetchnumpy()
    return np.asarray(rows["ln"], dtype=np.int64), np.asarray(rows["step"], dtype=np.int64)


def insert_step_rows(con: duckdb.DuckDBPyConnection, run_id: str, cls: Classified) -> None:
    """Fill ``_steps`` and ``_samples`` from the ``_fast`` lines listed in ``_kept``."""
    rl_set = key_set(con, [("rl", k) for k in cls.rl_keys] + [("rl", "es/" + k) for k in cls.es_keys])
    con.execute(
        """INSERT INTO _steps SELECT $1, k.segment, s.step, s.ln, s.time, s.curriculum, s.safety, s.timing,
                                    $2, s.rl_values
           FROM _st s JOIN _kept k ON s.ln = k.ln""",
        [run_id, rl_set],
    )
    _insert_samples(con, run_id, cls.axis_keys)


_GENERATION = {"prompt_id": "VARCHAR", "completion_id": "VARCHAR", "prompt_tokens": "BIGINT",
               "completion_tokens": "BIGINT", "truncated": "BOOLEAN", "completion": "VARCHAR"}


def _insert_samples(con, run_id: str, axis_keys: dict[str, list[str]]) -> None:
    pairs = [(kind, key) for name, kind in AXIS_FIELDS.items() for key in axis_keys[name]]
    p = _Params(run_id, None, key_set(con, pairs))
    sample: dict[str, object] = {"meta": {"task_id": "VARCHAR"}, "abstained": "BOOLEAN"}
    terms: list[str] = []
    for name in AXIS_FIELDS:
        sample[name], more = _values(f"g.{name}", axis_keys[name], p)
        terms += more
    p.values[1] = json.dumps({"schema": "VARCHAR", "gepa": [sample], "generation": [_GENERATION]})
    values = "[" + ", ".join(terms) + "]::DOUBLE[]"
    con.execute(
        f"""INSERT INTO _samples
            SELECT $1, segment, step, i, g.meta.task_id, gen.prompt_id, gen.completion_id,
                   coalesce(gen.prompt_tokens, error('prompt_tokens')),
                   coalesce(gen.completion_tokens, error('completion_tokens')),
                   gen.truncated,
                   CASE WHEN g IS NULL THEN error('gepa and generation differ')
                        WHEN g.abstained IS NOT NULL THEN g.abstained
                        WHEN upstream THEN false ELSE error('abstained missing') END,
                   coalesce(gen.completion, error('completion')), $3,
                   CASE WHEN g.rewards IS NULL OR (NOT upstream AND (g.tags IS NULL OR g.verifier IS NULL))
                        THEN error('axis object missing') ELSE {_checked("v", "non-finite axis value")} END
            FROM (SELECT segment, step, upstream, g, gen, i, {values} AS v
                  FROM (SELECT k.segment, k.step, r.schema IS NULL AS upstream, unnest(r.gepa) AS g,
                               unnest(r.generation) AS gen, unnest(range(len(r.gepa))) AS i
                        FROM (SELECT ln, json_transform(line, $2) AS r FROM _fast) f JOIN _kept k ON f.ln = k.ln))""",
        p.values,
    )
