"""Find run logs, cut them into complete lines, and check records in Python.

This is the storage-free half of ingest: it knows the file system and the log
schema (through :mod:`rg_tracer.schema`) but not DuckDB. The DuckDB half
(:mod:`analysis.db`) parses the bulk of every log in SQL and falls back on
:func:`check_line` here for the lines SQL cannot vouch for, so every rejected
line gets a ``file:line: field: problem`` message that matches ``validate``.

Run ids (documented in ``docs/analysis.md``):

* ``<dir>/train.jsonl``  -> ``<dir>`` relative to RUNS_DIR (POSIX separators);
* ``<dir>/<name>.jsonl`` -> ``<dir>/<name>``;
* ``train.jsonl`` directly in RUNS_DIR -> the name of RUNS_DIR itself, so
  ``rg-tracer analyze runs/exp1`` calls the run ``exp1``;
* a clash (``a/b/train.jsonl`` and ``a/b.jsonl``) keeps the id already in the
  database and gives the newcomer its file path with ``.jsonl``, then ``~2``, ...
* a run of another format (a TRL or verl output directory, :mod:`analysis.db.formats`) ->
  its directory relative to RUNS_DIR, as if it held ``train.jsonl``; its log is the converted
  one under ``RUNS_DIR/.rg-tracer/converted/`` (:attr:`LogFile.source` is the real directory).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rg_tracer.schema import LOG_NAME, SchemaError, validate

__all__ = [
    "LogFile",
    "Chunk",
    "BadLine",
    "Note",
    "discover_logs",
    "iter_chunks",
    "check_line",
    "split_error",
]

TRAIN_LOG = LOG_NAME


@dataclass(frozen=True)
class LogFile:
    """One JSONL log and the run it belongs to."""

    path: Path
    rel_path: str
    run_id: str
    run_dir: Path
    format: str = "rg-tracer"
    source: Path | None = None  # another format's run directory, converted into ``path``


@dataclass(frozen=True)
class Chunk:
    """Complete lines ``data[offsets[i]:offsets[i+1]]`` of one log.

    ``start``/``end`` are byte offsets in the file; ``first_line`` is the
    1-based line number of the first line.
    """

    data: bytes
    offsets: np.ndarray  # (n_lines + 1,) int64, offsets[0] == 0
    start: int
    end: int
    first_line: int

    @property
    def n_lines(self) -> int:
        return len(self.offsets) - 1

    def line(self, i: int) -> bytes:
        return self.data[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class BadLine:
    """A line that was skipped, with the reason in ``field: problem`` form."""

    line: int
    field: str
    message: str


@dataclass(frozen=True)
class Note:
    """``count`` lines from ``line`` on were read with a default for ``field`` (not skipped)."""

    line: int
    field: str
    message: str
    count: int = 1


def _base_id(rel: Path, root_name: str) -> str:
    parent = rel.parent.as_posix()
    if rel.name == TRAIN_LOG:
        return root_name if parent == "." else parent
    stem = rel.name[: -len(".jsonl")]
    return stem if parent == "." else f"{parent}/{stem}"


_FILE_TYPES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def not_regular(path: Path) -> str | None:
    """Why ``path`` (links followed) is not a regular file that can be read to its end, or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_TYPES if test(mode)), "not a file")
    return f"not a regular file ({kind}{', through a symlink' if os.path.islink(path) else ''})"


_LOG_KEYS = ("schema", "kind", "step", "rl", "gepa")


def looks_like_dataset(path: Path) -> bool:
    """Whether ``path``'s first line is a dataset row (``prompt``/``answer``, none of a log
    record's keys): ``rg-tracer data`` and ``make grokking`` can put datasets under a runs
    directory, and they are not runs."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
        row = json.loads(first)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(row, dict) and "prompt" in row and "answer" in row and not any(k in row for k in _LOG_KEYS)


def discover_logs(runs_dir: Path, known: dict[str, str] | None = None,
                  skipped: list[str] | None = None, format: str = "auto") -> list[LogFile]:
    """Every run under ``runs_dir`` (hidden directories skipped): each ``*.jsonl`` that is a regular
    file, and each directory of another format (``docs/peers.md``: detection rules).

    ``known`` maps ``rel_path -> run_id`` from earlier ingests so that ids stay
    stable when a clashing file appears later. A FIFO, a device (or a symlink to
    one) would block or never end: it is left out, with a note in ``skipped``.
    ``format``: ``auto``, or the one format to read (runs of the others are left out, noted).
    Nothing is converted here: a foreign run's :attr:`LogFile.path` may not exist yet.
    """
    from analysis.db.formats import AUTO, check_format, converted_rel, readers

    runs_dir = Path(runs_dir)
    format = check_format(format)
    known = dict(known or {})
    root = runs_dir.resolve()
    root_name = root.name or "root"
    native_ok = format in (AUTO, "rg-tracer")
    foreign = [r for r in readers(format) if r.name != "rg-tracer"]
    # (key in _files, path the id is derived from, log path, run dir, format, source directory)
    found: list[tuple[str, Path, Path, Path, str, Path | None]] = []
    native_roots: list[str] = []
    left_out = 0
    for dirpath, dirnames, filenames in os.walk(runs_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if format == AUTO and TRAIN_LOG in filenames and not not_regular(here / TRAIN_LOG):
            native_roots.append(dirpath)
        inside_native = any(dirpath == r or dirpath.startswith(r.rstrip(os.sep) + os.sep) for r in native_roots)
        reader = None if inside_native else _detect(foreign, here, skipped)
        if reader is not None:
            rel_dir = here.relative_to(runs_dir).as_posix()
            key = converted_rel(rel_dir)
            found.append((key, Path(rel_dir) / TRAIN_LOG, root / key, root / here.relative_to(runs_dir),
                          reader.name, root / here.relative_to(runs_dir)))
            dirnames[:] = []  # its checkpoints and dumps are part of it, not runs
            continue
        for name in sorted(filenames):
            if name.endswith(".jsonl") and not name.startswith("."):
                problem = not_regular(Path(dirpath, name))
                rel = Path(dirpath, name).relative_to(runs_dir)
                if not problem and rel.as_posix() not in known and looks_like_dataset(Path(dirpath, name)):
                    problem = "a dataset (prompt/answer rows), not a run log"
                if problem:
                    if skipped is not None:
                        skipped.append(f"{Path(dirpath, name)}: {problem}; skipped")
                    continue
                if not native_ok:
                    left_out += 1
                    continue
                path = root / rel  # absolute: the database is read from other directories (notebooks/)
                found.append((rel.as_posix(), rel, path, path.parent, "rg-tracer", None))
    if left_out and skipped is not None:
        skipped.append(f"{runs_dir}: {left_out} rg-tracer JSONL log(s) left out (format {format!r} reads only "
                       f"{format} runs)")
    # train.jsonl files (and foreign runs) first: they own the plain directory ids.
    found.sort(key=lambda f: (f[1].name != TRAIN_LOG, f[1].as_posix()))
    taken = {known[f[0]] for f in found if f[0] in known}
    logs = []
    for key, id_rel, path, run_dir, fmt, source in found:
        run_id = known.get(key)
        if run_id is None:
            run_id = _base_id(id_rel, root_name)
            if run_id in taken:
                run_id = key
            suffix = 2
            while run_id in taken:
                run_id, suffix = f"{key}~{suffix}", suffix + 1
            taken.add(run_id)
        logs.append(LogFile(path, key, run_id, run_dir, fmt, source))
    return logs


def _detect(readers: list, directory: Path, skipped: list[str] | None):
    """The first reader that takes ``directory`` for one of its runs, or None."""
    for reader in readers:
        try:
            if reader.detect(directory):
                return reader
        except Exception as exc:  # a reader's bug, or a file it could not open: not a run of it
            if skipped is not None:
                skipped.append(f"{directory}: the {reader.name} reader could not check it "
                               f"({type(exc).__name__}: {exc}); not read as a {reader.name} run")
    return None


def iter_chunks(path: Path, offset: int, first_line: int, chunk_bytes: int = 64 << 20) -> Iterator[Chunk]:
    """Yield the complete lines after byte ``offset`` in blocks of ~``chunk_bytes``.

    A last line without its newline (a writer mid-line, or a run killed while
    writing) is not yielded: the next call starts from it again.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            data = f.read(chunk_bytes)
            if not data:
                return
            if not data.endswith(b"\n"):
                data += f.readline()  # finish the line (or reach the end of the file)
            offsets = _line_offsets(data)
            if len(offsets) == 1:  # only a partial last line
                return
            end = offset + int(offsets[-1])
            yield Chunk(data, offsets, offset, end, first_line)
            if end < offset + len(data):
                return  # the rest is a partial last line
            offset = end
            first_line += len(offsets) - 1


def _line_offsets(data: bytes) -> np.ndarray:
    # Lines are long (kilobytes), so memchr via bytes.find beats a numpy scan.
    starts = [0]
    find, pos = data.find, 0
    while True:
        pos = find(b"\n", pos) + 1
        if pos == 0:
            break
        starts.append(pos)
    return np.asarray(starts, dtype=np.int64)


#: Text that may hide a lone surrogate (``"\\ud800"``) or a number a float cannot hold (NaN,
#: Infinity, 1e400): only lines that match are walked value by value.
_SUSPECT = re.compile(r"\\u[dD][89a-fA-F]|NaN|Infinity|[eE]\+?([3-9]\d\d|\d{4})")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _unstorable(record: object) -> str | None:
    """``"field: problem"`` for the first lone surrogate or non-finite number anywhere in ``record``.

    JSON has no NaN; Python's ``json`` writes it anyway, and the schema says a value that
    could not be computed is ``null``. A ``"\\ud800"`` escape parses in Python but is not
    Unicode: it could be neither stored nor printed. Iterative: a record may nest deeply.
    """
    stack: list[tuple[str, object]] = [("", record)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return (f"{where or '<record>'}: non-finite value (NaN, Infinity or beyond 1.8e308); "
                        "write null for a value that could not be computed")
        elif isinstance(value, str):
            if _LONE_SURROGATE.search(value):
                return f"{where or '<record>'}: not valid Unicode (a lone surrogate \\u escape); write UTF-8 text"
        elif isinstance(value, dict):
            items = []
            for key, item in value.items():
                if _LONE_SURROGATE.search(key):
                    return (f"{where or '<record>'}: a key is not valid Unicode (a lone surrogate \\u escape); "
                            "write UTF-8 text")
                items.append((f"{where}.{key}" if where else key, item))
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def check_line(raw: bytes, notes: list | None = None) -> dict | str | None:
    """Parse and validate one line.

    Returns the upgraded record, ``None`` for a blank line (skipped silently,
    as JSONL readers do), or ``"field: problem"``. ``notes`` (a list) receives
    ``(field, message)`` for each field read with its default
    (:func:`rg_tracer.schema.validate`).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"<line>: not UTF-8 ({exc.reason} at byte {exc.start})"
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except RecursionError:
        return "<line>: not valid JSON (nested too deeply); write flatter records"
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
        return f"<line>: not valid JSON ({msg})"
    if _SUSPECT.search(text):
        problem = _unstorable(record)
        if problem:
            return problem
    found: list = []
    try:
        record = validate(record, found)
    except SchemaError as exc:
        return str(exc)
    if notes is not None:
        notes.extend(found)
    return record


def split_error(message: str) -> tuple[str, str]:
    """``"field: problem"`` -> ``(field, problem)``."""
    field, _, problem = message.partition(": ")
    return field, problem
