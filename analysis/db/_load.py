"""Load one log into the database, one transaction per chunk of complete lines.

Each chunk tries, in order: the SQL fast path for step lines with the Python
path for the rest; the Python path for every line (after any SQL error); and
finally one line at a time, so one line DuckDB cannot store costs that line
only. The file's byte offset is committed with the rows, so an interrupted
ingest resumes exactly where the last committed chunk ended.

An error of the database itself (disk full, out of memory, I/O, a database
DuckDB has invalidated) is no fault of any line: it aborts the chunk with
:class:`StorageError`, nothing is recorded as bad, the offsets stay at the last
committed chunk, and the next ingest reads the chunk again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis.db._fast import (
    Classified,
    batched,
    classify,
    extra_lines,
    insert_step_rows,
    lines_table,
    stage_steps,
)
from analysis.db._records import PythonLines, count_notes, dumps, read_python_lines, supersede
from analysis.db._tables import STEP_TABLES
from analysis.logfiles import BadLine, Chunk, Note, iter_chunks, not_regular

__all__ = ["FileState", "FileReport", "StorageError", "load_file", "HEAD_BYTES", "MAX_STORED_ERRORS"]

HEAD_BYTES = 4096  # hashed to notice a log that was replaced, not appended to
MAX_STORED_ERRORS = 1000  # per chunk, in ingest_errors


@dataclass
class FileState:
    """Row of ``_files``: how far a log has been read."""

    rel_path: str
    run_id: str
    path: str
    run_dir: str
    byte_offset: int = 0
    lines: int = 0
    segment: int = 0
    max_step: int = -1
    head_len: int = 0
    head_hash: str = ""
    bad_lines: int = 0


@dataclass
class FileReport:
    """What one ingest call did to one log."""

    run_id: str
    path: Path
    new_lines: int = 0
    records: int = 0
    errors: list[BadLine] = field(default_factory=list)
    n_errors: int = 0
    restarted: bool = False
    notes: list[Note] = field(default_factory=list)  # fields read with a default, one per (field, message)
    skipped: str | None = None  # why the file was not read at all


class StorageError(Exception):
    """The database could not store a chunk (disk full, I/O, memory): no line's fault."""

    def __init__(self, path: str, first_line: int, last_line: int, detail: str) -> None:
        super().__init__(detail)
        self.path, self.first_line, self.last_line, self.detail = path, first_line, last_line, detail


#: DuckDB errors of the database itself, never of a line's content.
_STORAGE_ERRORS = (duckdb.OperationalError, duckdb.FatalException, duckdb.InternalError, duckdb.InterruptException,
                   duckdb.PermissionException)
#: How DuckDB starts the message of those errors when it raises them under another class. Only the
#: start counts: the rest of a message may quote a line (a line could say "No space left").
_STORAGE_PREFIXES = ("IO Error", "FATAL Error", "Out of Memory Error", "Permission Error", "Interrupted")
#: What one line's content can make the loaders raise (then the line alone is retried, and skipped).
_LINE_ERRORS = (duckdb.Error, pa.ArrowException, ValueError, ArithmeticError, RecursionError)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def is_storage_error(exc: BaseException) -> bool:
    """Disk full, I/O, memory, an invalidated database: the database's fault, not a line's."""
    if isinstance(exc, (MemoryError, OSError, *_STORAGE_ERRORS)):
        return True
    return isinstance(exc, duckdb.Error) and str(exc).startswith(_STORAGE_PREFIXES)


@dataclass
class _Plan:
    cls: Classified | None
    py: PythonLines
    n_fast: int = 0
    notes: list[Note] = field(default_factory=list)  # per (field, message), Python and SQL lines together


def _head_hash(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(n)).hexdigest()


def load_file(con: duckdb.DuckDBPyConnection, state: FileState, chunk_bytes: int, bar) -> FileReport:
    """Read what was appended to ``state.path`` since ``state.byte_offset``."""
    path = Path(state.path)
    report = FileReport(state.run_id, path)
    problem = not_regular(path)  # it may have changed since discover_logs
    if problem:
        report.skipped = f"{path}: {problem}; skipped (logs must be regular files)"
        return report
    size = path.stat().st_size
    if size < state.byte_offset or (state.head_len and _head_hash(path, state.head_len) != state.head_hash):
        report.restarted = True
        _forget_run(con, state.run_id)
        state.__dict__.update(FileState(state.rel_path, state.run_id, state.path, state.run_dir).__dict__)
    for chunk in iter_chunks(path, state.byte_offset, state.lines + 1, chunk_bytes):
        _load_chunk(con, state, chunk, report)
        report.new_lines += chunk.n_lines
        if bar is not None:
            bar.update(chunk.end - chunk.start)
    return report


def _forget_run(con, run_id: str) -> None:
    for table in (*STEP_TABLES, "evals", "segments", "ingest_errors", "ingest_notes", "runs"):
        con.execute(f"DELETE FROM {table} WHERE run_id = $1", [run_id])


def _failed(con, state: FileState, chunk: Chunk, exc: BaseException) -> None:
    """After ``exc``: roll back; raise :class:`StorageError` for the database's errors, re-raise
    what no line can cause (a bug, Ctrl-C); return for a line's error."""
    _rollback(con)
    if is_storage_error(exc):
        raise StorageError(state.path, chunk.first_line, chunk.first_line + chunk.n_lines - 1,
                           first_line(exc)) from exc
    if not isinstance(exc, _LINE_ERRORS):
        raise exc


def _load_chunk(con, state: FileState, chunk: Chunk, report: FileReport) -> None:
    for python_all in (False, True):
        try:
            plan = _plan(con, chunk, python_all)
            _commit(con, state, chunk, plan, report)
            return
        except BaseException as exc:
            _failed(con, state, chunk, exc)
    for i in range(chunk.n_lines):  # last resort: isolate the line DuckDB rejects
        a, b = int(chunk.offsets[i]), int(chunk.offsets[i + 1])
        one = Chunk(chunk.data[a:b], np.array([0, b - a]), chunk.start + a, chunk.start + b, chunk.first_line + i)
        try:
            _commit(con, state, one, _plan(con, one, True), report)
        except BaseException as exc:
            _failed(con, state, one, exc)
            bad = BadLine(one.first_line, "<record>", f"could not be stored: {first_line(exc)}")
            try:
                _commit(con, state, one, _Plan(None, PythonLines(errors=[bad])), report)
            except BaseException as again:
                _failed(con, state, one, again)
                raise


def _rollback(con) -> None:
    try:
        con.rollback()
    except duckdb.Error:
        pass  # no transaction was open


def _plan(con, chunk: Chunk, python_all: bool) -> _Plan:
    cls = None
    if not python_all:
        try:
            con.register("_chunk", batched(lines_table(chunk)))
            cls = classify(con, "_chunk")
        except (duckdb.Error, pa.ArrowInvalid) as exc:
            if is_storage_error(exc):
                raise
            cls = None
    if cls is None:
        indices = np.flatnonzero(np.diff(chunk.offsets) > 1)
    else:
        indices = np.asarray(cls.python_lns, dtype=np.int64) - chunk.first_line
    py = read_python_lines(chunk, indices)
    skip = None if cls is None else cls.python_lns
    _fast_view(con, skip, py.steps)
    if not py.steps:
        return _Plan(cls, py, len(cls.fast_lns) if cls else 0, _notes(cls, py))
    # Lines the Python path validated rejoin the SQL path, normalised.
    cls = classify(con, "_fast", {ln for ln, _ in py.steps})
    if cls.python_lns:  # valid, yet not loadable in SQL (a bug: the two paths should agree)
        rejected = set(cls.python_lns)
        py.errors += [BadLine(ln, "<record>", "valid, but not loadable by the SQL path") for ln in sorted(rejected)]
        py.steps = [(ln, text) for ln, text in py.steps if ln not in rejected]
        _fast_view(con, skip, py.steps)
    return _Plan(cls, py, len(cls.fast_lns), _notes(cls, py))


def _notes(cls: Classified | None, py: PythonLines) -> list[Note]:
    """The Python path's notes and the SQL path's (RL keys a step lacks), lines noted once."""
    notes = list(py.notes)
    if cls is not None:
        checked = {ln for ln, _ in py.steps}
        for key, lns in cls.missing_rl:
            lns = [ln for ln in lns if ln not in checked]
            if lns:
                notes.append(Note(min(lns), f"rl.{key}", "missing; read as a missing metric (null)", len(lns)))
    return count_notes(notes)


def _fast_view(con, skip: list[int] | None, extra: list[tuple[int, str]]) -> None:
    """``_fast``: the chunk's lines minus ``skip`` (None: none of them) plus ``extra``."""
    parts = []
    if skip is not None:
        con.register("_skip", pa.table({"ln": pa.array(skip, pa.int64())}))
        parts.append("SELECT ln, line FROM _chunk WHERE ln NOT IN (SELECT ln FROM _skip)")
    if extra:
        con.register("_extra", batched(extra_lines(extra)))
        parts.append("SELECT ln, line FROM _extra")
    if not parts:
        parts.append("SELECT NULL::BIGINT AS ln, NULL::VARCHAR AS line WHERE false")
    con.execute("CREATE OR REPLACE TEMP VIEW _fast AS " + " UNION ALL ".join(parts))


def _commit(con, state: FileState, chunk: Chunk, plan: _Plan, report: FileReport) -> None:
    con.begin()
    try:
        new = _write(con, state, chunk, plan)
        con.commit()
    except BaseException:
        _rollback(con)
        raise
    state.__dict__.update(new.__dict__)
    report.records += int(plan.n_fast) + len(plan.py.runs) + len(plan.py.evals) + len(plan.py.ends)
    report.n_errors += len(plan.py.errors)
    report.errors.extend(plan.py.errors[: max(0, 20 - len(report.errors))])
    if plan.notes:
        report.notes = count_notes(report.notes + plan.notes)


def _write(con, state: FileState, chunk: Chunk, plan: _Plan) -> FileState:
    new = replace(state)
    if plan.n_fast:
        step_lns, steps = stage_steps(con, plan.cls)
    else:
        step_lns = steps = np.zeros(0, dtype=np.int64)
    py = plan.py
    runs = [(ln, r) for ln, r in py.runs]
    evals = [(ln, r["step"], r["split"]) for ln, r in py.evals]
    sup = supersede(step_lns, steps, runs, evals, state.segment)
    args = [state.run_id]
    if sup.resume_floor is not None and new.max_step > sup.resume_floor:
        for table in (*STEP_TABLES, "evals"):
            con.execute(f"DELETE FROM {table} WHERE run_id = $1 AND step > $2", [*args, sup.resume_floor])
        new.max_step = sup.resume_floor
    kept = pa.table(
        {"ln": step_lns[sup.keep_steps], "step": steps[sup.keep_steps], "segment": sup.step_segments[sup.keep_steps]}
    )
    con.register("_kept", kept)
    if kept.num_rows:
        if int(pc.min(kept["step"]).as_py()) <= new.max_step:
            for table in STEP_TABLES:
                con.execute(f"DELETE FROM {table} WHERE run_id = $1 AND step IN (SELECT step FROM _kept)", args)
        insert_step_rows(con, state.run_id, plan.cls)
        new.max_step = max(new.max_step, int(pc.max(kept["step"]).as_py()))
    _insert_evals(con, state, new, py, sup)
    _insert_segments(con, state, py, sup)
    _insert_errors(con, state, py.errors)
    _insert_notes(con, state, plan.notes)
    new.segment = state.segment + len(py.runs)
    new.byte_offset, new.lines = chunk.end, chunk.first_line + chunk.n_lines - 1
    new.bad_lines += len(py.errors)
    if new.head_len < HEAD_BYTES:
        new.head_len = min(HEAD_BYTES, new.byte_offset)
        new.head_hash = _head_hash(Path(state.path), new.head_len)
    save_state(con, new)
    return new


def _insert_evals(con, state: FileState, new: FileState, py: PythonLines, sup) -> None:
    rows = [
        (int(seg), r["step"], r["split"], r["n"], axis, float(value))
        for (ln, r), keep, seg in zip(py.evals, sup.keep_evals, sup.eval_segments)
        if keep
        for axis, value in r["metrics"].items()
    ]
    keys = [(r["step"], r["split"]) for (_, r), keep in zip(py.evals, sup.keep_evals) if keep]
    if not keys:
        return
    con.register("_ev", pa.table({"step": [k[0] for k in keys], "split": [k[1] for k in keys]}))
    if min(k[0] for k in keys) <= new.max_step:
        con.execute(
            """DELETE FROM evals e WHERE run_id = $1
               AND EXISTS (SELECT 1 FROM _ev n WHERE n.step = e.step AND n.split = e.split)""",
            [state.run_id],
        )
    if rows:
        cols = list(zip(*rows))
        con.register(
            "_evrows",
            pa.table({"segment": pa.array(cols[0], pa.int32()), "step": pa.array(cols[1], pa.int64()),
                      "split": cols[2], "n": pa.array(cols[3], pa.int64()), "axis": cols[4], "value": cols[5]}),
        )
        con.execute("INSERT INTO evals SELECT $1, segment, step, split, n, axis, value FROM _evrows", [state.run_id])
    new.max_step = max(new.max_step, max(k[0] for k in keys))


def _insert_segments(con, state: FileState, py: PythonLines, sup) -> None:
    for (ln, r), segment in zip(sorted(py.runs, key=lambda x: x[0]), sup.run_segments):
        con.execute("DELETE FROM segments WHERE run_id = $1 AND segment = $2", [state.run_id, segment])
        con.execute(
            "INSERT INTO segments VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, NULL)",
            [state.run_id, segment, ln, r.get("time"), r.get("resumed_from_step"), r.get("seed"),
             dumps(r["config"]), dumps(r["versions"]), dumps(r["model"]), dumps(r["dataset"]),
             dumps(r.get("reward_weights"))],
        )
    run_lns = np.asarray(sorted(ln for ln, _ in py.runs), dtype=np.int64)
    for ln, r in py.ends:
        segment = state.segment + int(np.searchsorted(run_lns, ln, side="right"))
        con.execute(
            "UPDATE segments SET end_step = $3, status = $4 WHERE run_id = $1 AND segment = $2",
            [state.run_id, segment, r["step"], r["status"]],
        )


def _insert_errors(con, state: FileState, errors: list[BadLine]) -> None:
    if errors:
        con.executemany(
            "INSERT INTO ingest_errors VALUES ($1, $2, $3, $4, $5, now())",
            [[state.run_id, state.path, bad.line, bad.field, bad.message] for bad in errors[:MAX_STORED_ERRORS]],
        )


def _insert_notes(con, state: FileState, notes: list[Note]) -> None:
    if notes:
        con.executemany(
            "INSERT INTO ingest_notes VALUES ($1, $2, $3, $4, $5, $6, now())",
            [[state.run_id, state.path, n.line, n.field, n.message, n.count] for n in notes[:MAX_STORED_ERRORS]],
        )


def save_state(con, s: FileState) -> None:
    con.execute("DELETE FROM _files WHERE rel_path = $1", [s.rel_path])
    con.execute(
        "INSERT INTO _files VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())",
        [s.rel_path, s.run_id, s.path, s.run_dir, s.byte_offset, s.lines, s.segment, s.max_step,
         s.head_len, s.head_hash, s.bad_lines],
    )
