"""Records that take the Python path, and which rows a chunk supersedes.

Pure Python (no DuckDB). :func:`supersede` is :func:`rg_tracer.schema.supersede`'s rule
(the one rule; tests check the two agree), vectorised over a chunk's line numbers:

* a ``run`` record restarting at ``k = rg_tracer.schema.resume_point(run)`` (``null``
  counts as 0: a fresh start in the same log) supersedes every step/eval row with
  ``step > k`` written before it;
* otherwise a step (or an eval for the same split) logged twice keeps the
  later line: latest wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from analysis.logfiles import BadLine, Chunk, Note, check_line, split_error
from rg_tracer.schema import resume_point

__all__ = ["PythonLines", "read_python_lines", "Supersede", "supersede", "dumps", "count_notes"]


def dumps(value: object) -> str | None:
    """JSON text for a JSON column (``None`` stays SQL NULL)."""
    return None if value is None else json.dumps(value, ensure_ascii=False, allow_nan=False)


@dataclass
class PythonLines:
    """What the Python path made of some lines of a chunk."""

    steps: list[tuple[int, str]] = field(default_factory=list)  # (ln, normalised JSON)
    runs: list[tuple[int, dict]] = field(default_factory=list)
    evals: list[tuple[int, dict]] = field(default_factory=list)
    ends: list[tuple[int, dict]] = field(default_factory=list)
    errors: list[BadLine] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)  # fields read with their default (lines kept)


def read_python_lines(chunk: Chunk, indices: list[int] | np.ndarray) -> PythonLines:
    """Validate lines ``indices`` (0-based within ``chunk``) one by one."""
    out = PythonLines()
    for i in indices:
        ln = chunk.first_line + int(i)
        found: list[tuple[str, str]] = []
        result = check_line(chunk.line(int(i)), found)
        if result is None:
            continue
        if isinstance(result, str):
            out.errors.append(BadLine(ln, *split_error(result)))
            continue
        kind = result["kind"]
        if kind == "step":
            try:
                text = json.dumps(result, ensure_ascii=False, allow_nan=False)
            except (ValueError, RecursionError) as exc:  # check_line lets nothing through that fails here
                out.errors.append(BadLine(ln, "<record>", f"cannot be written back as JSON ({exc})"))
                continue
            out.steps.append((ln, text))
        else:
            getattr(out, kind + "s").append((ln, result))
        out.notes += [Note(ln, f, message) for f, message in found]
    return out


def count_notes(notes: list[Note]) -> list[Note]:
    """One note per (field, message): its first line and how many lines it covers."""
    out: dict[tuple[str, str], Note] = {}
    for note in notes:
        key = (note.field, note.message)
        old = out.get(key)
        out[key] = note if old is None else Note(min(old.line, note.line), note.field, note.message,
                                                 old.count + note.count)
    return sorted(out.values(), key=lambda n: (n.line, n.field))


@dataclass
class Supersede:
    """Outcome of :func:`supersede` for one chunk."""

    keep_steps: np.ndarray  # bool mask over the chunk's step lines
    keep_evals: np.ndarray  # bool mask over the chunk's eval records
    step_segments: np.ndarray
    eval_segments: np.ndarray
    run_segments: list[int]
    resume_floor: int | None  # delete earlier rows with step > this


def _segments(lns: np.ndarray, run_lns: np.ndarray, base: int) -> np.ndarray:
    return base + np.searchsorted(run_lns, lns, side="right").astype(np.int64)


def _alive(lns: np.ndarray, steps: np.ndarray, run_lns: np.ndarray, run_ks: np.ndarray) -> np.ndarray:
    if len(run_lns) == 0:
        return np.ones(len(lns), dtype=bool)
    # suffix_min[i] = smallest resume point among run records i.. (in line order)
    suffix_min = np.minimum.accumulate(run_ks[::-1])[::-1]
    suffix_min = np.append(suffix_min, np.iinfo(np.int64).max)
    later = np.searchsorted(run_lns, lns, side="right")
    return steps <= suffix_min[later]


def _latest(lns: np.ndarray, keys: list[tuple], alive: np.ndarray) -> np.ndarray:
    keep = np.zeros(len(lns), dtype=bool)
    seen: set[tuple] = set()
    for i in np.argsort(-lns, kind="stable"):
        if alive[i] and keys[i] not in seen:
            seen.add(keys[i])
            keep[i] = True
    return keep


def supersede(
    step_lns: np.ndarray,
    steps: np.ndarray,
    runs: list[tuple[int, int | None]],
    evals: list[tuple[int, int, str]],
    segment_base: int,
) -> Supersede:
    """Which step lines and eval records of a chunk survive, and their segments.

    ``runs`` are ``(line, run record)``; ``evals`` ``(line, step, split)``.
    """
    step_lns = np.asarray(step_lns, dtype=np.int64)
    steps = np.asarray(steps, dtype=np.int64)
    runs = sorted(runs, key=lambda r: r[0])
    run_lns = np.asarray([ln for ln, _ in runs], dtype=np.int64)
    run_ks = np.asarray([resume_point(r) for _, r in runs], dtype=np.int64)
    alive = _alive(step_lns, steps, run_lns, run_ks)
    keep_steps = np.zeros(len(step_lns), dtype=bool)
    if len(step_lns):
        # latest wins: the last alive line of each step value
        order = np.lexsort((-step_lns, steps))
        first = np.ones(len(order), dtype=bool)
        first[1:] = steps[order][1:] != steps[order][:-1]
        cand = order[first]
        # the latest line of a step may be dead while an earlier one lives: a
        # resume dropped it, and then the earlier one is dead too (it's older).
        keep_steps[cand] = alive[cand]
    e_lns = np.asarray([e[0] for e in evals], dtype=np.int64)
    e_steps = np.asarray([e[1] for e in evals], dtype=np.int64)
    e_alive = _alive(e_lns, e_steps, run_lns, run_ks)
    keep_evals = _latest(e_lns, [(e[1], e[2]) for e in evals], e_alive)
    return Supersede(
        keep_steps=keep_steps,
        keep_evals=keep_evals,
        step_segments=_segments(step_lns, run_lns, segment_base),
        eval_segments=_segments(e_lns, run_lns, segment_base),
        run_segments=[segment_base + i + 1 for i in range(len(runs))],
        resume_floor=int(run_ks.min()) if len(runs) else None,
    )
