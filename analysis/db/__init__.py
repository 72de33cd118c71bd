"""The DuckDB layer (ingest and store): the only part of ``analysis`` that imports duckdb.

``ingest(runs_dir)`` loads every run log under ``runs_dir`` into a DuckDB file
(default ``runs_dir/rg_tracer.duckdb``), reading only what was appended since
the previous call. Runs of other formats (TRL, verl: :mod:`analysis.db.formats`) are
converted into rg-tracer logs under ``runs_dir/.rg-tracer/converted/`` first. :class:`~analysis.db.store.Runs` (``open_runs``) reads it
back as polars DataFrames. Tables are documented in ``docs/analysis.md``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from tqdm import tqdm

from analysis.db._load import FileReport, FileState, StorageError, first_line, is_storage_error, load_file
from analysis.db._tables import DDL, DERIVED_TABLES, LAYOUT, VIEWS
from analysis.db.formats import AUTO, FormatError, check_format, describe_formats, get_reader
from analysis.db.formats.conversion import convert
from analysis.logfiles import LogFile, discover_logs

__all__ = ["DEFAULT_DB", "IngestError", "IngestResult", "FileReport", "ingest", "connect"]

DEFAULT_DB = "rg_tracer.duckdb"
CHUNK_BYTES = 128 << 20


class IngestError(Exception):
    """A problem the user can fix; the message says how."""


@dataclass
class IngestResult:
    """Per-log outcome of one :func:`ingest` call."""

    db_path: Path
    files: list[FileReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line each: files left out, and why

    @property
    def n_errors(self) -> int:
        return sum(f.n_errors for f in self.files)


def connect(db_path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the database, turning DuckDB's errors into :class:`IngestError`."""
    if read_only and not Path(db_path).exists():
        raise IngestError(f"{db_path} does not exist; run `rg-tracer ingest RUNS_DIR` first")
    try:
        con = duckdb.connect(str(db_path), read_only=read_only)
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        if "lock" in first.lower():
            raise IngestError(f"{db_path} is open in another process ({first}); close it or pass --db PATH") from exc
        raise IngestError(f"cannot open {db_path} as a DuckDB database ({first}); pass --db PATH") from exc
    # Insertion order is meaningless here (every row carries its step); dropping
    # it lets DuckDB stream. One checkpoint at close instead of one per chunk
    # commit halves the time to load a large log.
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET checkpoint_threshold = '1GB'")
    return con


def _prepare(con, runs_dir: Path, db_path: Path) -> None:
    """Create tables; rebuild a database of another layout; refuse another runs dir."""
    con.execute(DDL)
    meta = dict(con.execute("SELECT key, value FROM _meta").fetchall())
    root = str(runs_dir.resolve())
    if meta.get("runs_dir") not in (None, root):
        raise IngestError(
            f"{db_path} holds runs from {meta['runs_dir']}, not {root}; pass --db with a new file for this directory"
        )
    if meta.get("layout") not in (None, LAYOUT):
        for kind in ("VIEW", "TABLE"):
            names = con.execute(
                f"SELECT {kind.lower()}_name FROM duckdb_{kind.lower()}s() WHERE NOT temporary AND NOT internal"
            ).fetchall()
            for (name,) in names:
                con.execute(f'DROP {kind} IF EXISTS "{name}"')
        con.execute(DDL)
    con.execute(VIEWS)
    con.execute("DELETE FROM _meta")
    con.execute("INSERT INTO _meta VALUES ('layout', $1), ('runs_dir', $2)", [LAYOUT, root])


def _states(con) -> dict[str, FileState]:
    rows = con.execute(
        """SELECT rel_path, run_id, path, run_dir, byte_offset, lines, segment, max_step,
                  head_len, head_hash, bad_lines FROM _files"""
    ).fetchall()
    return {r[0]: FileState(*r) for r in rows}


def _refresh_run(con, state: FileState, log_path: str | None = None) -> None:
    """Recompute the ``runs`` row of one run from its tables (``log_path``: what to show as its log,
    the source directory of a converted run)."""
    con.execute("DELETE FROM runs WHERE run_id = $1", [state.run_id])
    con.execute(
        """INSERT INTO runs
        WITH last AS (SELECT * FROM segments WHERE run_id = $1 ORDER BY segment DESC LIMIT 1)
        SELECT $1, $2, $3,
          (SELECT count(*) FROM steps WHERE run_id = $1),
          (SELECT min(step) FROM steps WHERE run_id = $1),
          (SELECT max(step) FROM steps WHERE run_id = $1),
          (SELECT count(*) FROM samples WHERE run_id = $1),
          (SELECT count(*) FROM (SELECT DISTINCT step, split FROM evals WHERE run_id = $1)),
          (SELECT count(*) FROM segments WHERE run_id = $1),
          coalesce((SELECT coalesce(status, 'unfinished') FROM last), 'unknown'),
          (SELECT min(started_at) FROM segments WHERE run_id = $1),
          (SELECT model FROM last), (SELECT seed FROM last), (SELECT config FROM last),
          $4, $5, now()""",
        [state.run_id, state.run_dir, log_path or state.path, state.lines, state.bad_lines],
    )


def ingest(
    runs_dir: str | Path,
    db_path: str | Path | None = None,
    *,
    progress: bool | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    format: str = AUTO,
) -> IngestResult:
    """Load new lines of every ``*.jsonl`` under ``runs_dir`` into ``db_path``.

    ``format``: ``auto`` detects each run directory's format (rg-tracer, trl, verl); a format's
    name reads only runs of that format (``docs/peers.md``). A run of another format is converted
    into ``runs_dir/.rg-tracer/converted/<run>/train.jsonl`` when its files changed; one that
    cannot be read is left out with a note naming the file, and the others are ingested.
    ``progress=None`` shows a tqdm bar on stderr only when it is a terminal.
    Raises :class:`IngestError` for user mistakes (no logs, database in use) and when the database
    cannot store a chunk (disk full, out of memory): then no line is skipped, and the next call
    resumes at that chunk.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise IngestError(f"{runs_dir} is not a directory; pass the directory your training runs write to")
    try:
        format = check_format(format)
        if format != AUTO:
            get_reader(format)
    except ValueError as exc:
        raise IngestError(str(exc)) from None
    db_path = Path(db_path) if db_path is not None else runs_dir / DEFAULT_DB
    skipped: list[str] = []
    if not discover_logs(runs_dir, skipped=skipped, format=format):  # before creating a database for nothing
        also = f" ({len(skipped)} left out: {skipped[0]})" if skipped else ""
        if format in (AUTO, "rg-tracer"):
            raise IngestError(
                f"no *.jsonl logs under {runs_dir}{also}, nor a run directory of another format; point RUNS_DIR at "
                f"the directory that holds your runs (each run writes <run_dir>/train.jsonl); {describe_formats()}"
            )
        raise IngestError(f"no {format} runs under {runs_dir}{also}; pass --format auto to read every format; "
                          f"{describe_formats()}")
    con = connect(db_path)
    try:
        return _ingest(con, runs_dir, db_path, progress, chunk_bytes, format)
    except StorageError as exc:
        raise IngestError(
            f"{exc.path}: lines {exc.first_line}-{exc.last_line} could not be stored in {db_path} ({exc.detail}); "
            f"no line was skipped: free disk space (or memory) and run ingest again, it resumes at line "
            f"{exc.first_line}") from None
    except duckdb.Error as exc:
        if not is_storage_error(exc):
            raise
        raise IngestError(f"could not write {db_path} ({first_line(exc)}); no line was skipped: free disk space "
                          "(or memory) and run ingest again, it resumes where it stopped") from None
    finally:
        try:
            con.close()
        except duckdb.Error:
            pass  # an invalidated database, or no room for the checkpoint: committed chunks are in the WAL


def _convert(runs_dir: Path, logs: list[LogFile], notes: list[str]) -> list[LogFile]:
    """Bring the converted log of every run of another format up to date; leave out (with a
    note) the runs that cannot be read."""
    kept = []
    root = runs_dir.resolve()
    for log in logs:
        if log.source is not None:
            try:
                done = convert(runs_dir, log.source, get_reader(log.format), log.source.relative_to(root).as_posix())
            except FormatError as exc:
                notes.append(f"{exc}; run {log.run_id} ({log.format}) left out")
                continue
            notes.extend(done.notes)
        kept.append(log)
    return kept


def _ingest(con, runs_dir: Path, db_path: Path, progress: bool | None, chunk_bytes: int,
            format: str = AUTO) -> IngestResult:
    result = IngestResult(db_path)
    _prepare(con, runs_dir, db_path)
    states = _states(con)
    found = discover_logs(runs_dir, {rel: s.run_id for rel, s in states.items()}, result.notes, format)
    logs = _convert(runs_dir, found, result.notes)
    if found and not logs and not states:
        raise IngestError(f"no run under {runs_dir} could be read: " + "; ".join(result.notes[-3:]))
    shown = {log.rel_path: str(log.source) for log in logs if log.source is not None}
    for log in logs:
        states.setdefault(log.rel_path, FileState(log.rel_path, log.run_id, str(log.path), str(log.run_dir)))
        states[log.rel_path].path, states[log.rel_path].run_dir = str(log.path), str(log.run_dir)
    todo = sum(max(0, log.path.stat().st_size - states[log.rel_path].byte_offset) for log in logs)
    disable = None if progress is None else not progress
    with tqdm(total=todo, unit="B", unit_scale=True, desc="ingest", file=sys.stderr, disable=disable) as bar:
        for log in logs:
            state = states[log.rel_path]
            report = load_file(con, state, chunk_bytes, bar)
            if report.skipped:
                result.notes.append(report.skipped)
                continue
            if report.new_lines or report.restarted or not _has_run_row(con, state.run_id):
                _refresh_run(con, state, shown.get(log.rel_path))
            result.files.append(report)
    if any(f.new_lines or f.restarted for f in result.files):
        for table in DERIVED_TABLES:  # stale now; analyze writes them again
            con.execute(f"DROP TABLE IF EXISTS {table}")
    return result


def _has_run_row(con, run_id: str) -> bool:
    return con.execute("SELECT count(*) FROM runs WHERE run_id = $1", [run_id]).fetchall()[0][0] > 0
