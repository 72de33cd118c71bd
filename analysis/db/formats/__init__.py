"""Run formats the analysis reads: rg-tracer's own JSONL, and other trainers' output directories.

A :class:`Reader` turns one run directory of its format into ``rg-tracer/2`` records. The
loader reads only rg-tracer JSONL, so a run of another format is *converted* first: its records
are written to ``RUNS_DIR/.rg-tracer/converted/<run path>/train.jsonl`` (hidden, so never taken
for a run itself) and that file is ingested as the run's log. The conversion runs again only when
one of the reader's :attr:`Reader.sources` changed (size or modification time) or the reader's
:attr:`Reader.version` did; when the new log only extends the old one it is appended to, so the
loader reads just the new lines.

The registry (:data:`FORMATS`) maps a format's name to the module that holds its reader as
``READER``; modules are imported when first needed, and one that does not exist (``verl``, until
it lands) is skipped silently. Detection, per directory (``docs/peers.md``):

* ``format="auto"``: the first reader, in :data:`FORMATS` order, whose ``detect`` accepts the
  directory. A directory with an rg-tracer log (``train.jsonl``) is an rg-tracer run, and no
  directory below it is taken for a run of another format (its checkpoints are not runs).
  A directory another reader accepts is one run: nothing below it is walked.
* ``format=<name>``: only that reader's runs are read, every directory it accepts; runs of other
  formats are left out (with a note).

Readers report a problem that stops a run from being read by raising :class:`FormatError` (any
other exception is reported the same way, naming the reader), and a problem they work around with
:func:`note` (one line, naming the file); both reach ``IngestResult.notes`` and the report.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rg_tracer.schema import SCHEMA, SchemaError, validate

__all__ = [
    "AUTO",
    "FORMATS",
    "CONVERTED_DIR",
    "Reader",
    "FormatError",
    "Conversion",
    "note",
    "record",
    "readers",
    "get_reader",
    "check_format",
    "describe_formats",
    "converted_rel",
    "convert",
]

AUTO = "auto"
#: name -> module holding ``READER``, in detection order (rg-tracer's own format first).
FORMATS: dict[str, str] = {
    "rg-tracer": "analysis.db.formats.native",
    "trl": "analysis.db.formats.trl",
    "verl": "analysis.db.formats.verl",
}
#: where converted logs live, relative to RUNS_DIR
CONVERTED_DIR = ".rg-tracer/converted"
_STAMP = "source.json"


@dataclass(frozen=True)
class Reader:
    """One run format.

    ``detect(run_dir)``: whether ``run_dir`` is one run of this format (cheap: it is called for
    every directory under RUNS_DIR). ``sources(run_dir)``: the files whose size and modification
    time decide when to convert again. ``records(run_dir)``: the run as ``rg-tracer/2`` records,
    built with ``rg_tracer.schema``'s builders: one ``run`` record first, then ``step`` records
    (``rl``; ``gepa``/``generation`` where per-sample data exists, else empty lists), ``eval``
    records if any, an ``end`` record if the run completed. ``describe``: what a run directory of
    this format holds, for messages. ``version``: bump it when ``records`` changes its output, so
    that cached conversions are made again.
    """

    name: str
    detect: Callable[[Path], bool]
    sources: Callable[[Path], list[Path]]
    records: Callable[[Path], Iterator[dict]]
    describe: str = ""
    version: int = 1


class FormatError(Exception):
    """A run directory (one of its files) cannot be read in its format; the message names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = Path(path), problem


_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("rg_tracer_format_notes", default=None)


def note(message: str) -> None:
    """Record a problem a reader worked around (a corrupt file left out, data TRL did not keep):
    one line, naming the file or run directory. Outside a conversion it is dropped."""
    notes = _NOTES.get()
    if notes is not None and message not in notes:
        notes.append(message)


def record(kind: str, **fields: object) -> dict:
    """A complete record: ``{"schema": "rg-tracer/2", "kind": kind, **fields}`` (``fields`` from
    ``rg_tracer.schema``'s builders)."""
    return {"schema": SCHEMA, "kind": kind, **fields}


_LOADED: dict[str, Reader | None] = {}


def _load(name: str) -> Reader | None:
    if name not in _LOADED:
        module_name = FORMATS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # the module exists but misses something it imports
                raise
            _LOADED[name] = None
        else:
            _LOADED[name] = module.READER
    return _LOADED[name]


def readers(name: str = AUTO) -> list[Reader]:
    """The readers available (``auto``), or the one named, in detection order."""
    names = list(FORMATS) if name == AUTO else [name]
    return [r for r in (_load(n) for n in names) if r is not None]


def get_reader(name: str) -> Reader:
    """The reader of format ``name``; ``ValueError`` (listing the formats) for an unknown one."""
    check_format(name)
    found = readers(name) if name != AUTO else []
    if not found:
        raise ValueError(f"format {name!r} is not available in this installation; {describe_formats()}")
    return found[0]


def check_format(name: str) -> str:
    """``name`` if it is ``auto`` or a known format, else ``ValueError`` listing them."""
    if name != AUTO and name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; choose {AUTO} or one of: {', '.join(FORMATS)}")
    return name


def describe_formats() -> str:
    """One line: every available format and what its run directory holds."""
    parts = [f"{r.name} ({d})" if (d := getattr(r, "describe", "")) else r.name for r in readers()]
    return "formats known: " + "; ".join(parts)


def converted_rel(rel_dir: str) -> str:
    """The converted log of the run at ``rel_dir`` (POSIX, relative to RUNS_DIR; ``.`` for RUNS_DIR
    itself), relative to RUNS_DIR."""
    return f"{CONVERTED_DIR}/train.jsonl" if rel_dir in ("", ".") else f"{CONVERTED_DIR}/{rel_dir}/train.jsonl"


@dataclass
class Conversion:
    """What :func:`convert` did: ``status`` is ``unchanged``, ``appended``, ``written`` (new) or
    ``rewritten``; ``notes`` are the reader's (kept with the cache, so repeated on every ingest)."""

    path: Path
    status: str
    notes: list[str] = field(default_factory=list)


_RAW_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _dumps(record: dict) -> bytes:
    from rg_tracer.runtime.log_writer import json_safe

    text = json.dumps(json_safe(record), ensure_ascii=False, allow_nan=False)
    return (text.translate(_RAW_BREAKS) + "\n").encode("utf-8")


def _stamp_of(reader: Reader, run_dir: Path) -> dict:
    files = []
    for path in sorted(set(reader.sources(run_dir))):
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.append([str(path), st.st_size, st.st_mtime_ns])
    return {"format": reader.name, "version": getattr(reader, "version", 1), "run_dir": str(run_dir),
            "sources": files}


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _rewrites(log: Path) -> int:
    """The rewrite counter in the first line of an earlier conversion (0 if none)."""
    try:
        with open(log, "rb") as f:
            first = json.loads(f.readline(1 << 20))
        return int(first.get("converted", {}).get("rewrite", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def _takes_notes(reader: Reader) -> bool:
    """Whether ``reader.records`` takes a ``notes`` list (of ``(path, message)`` or strings)."""
    try:
        return "notes" in inspect.signature(reader.records).parameters
    except (TypeError, ValueError):
        return False


def _checked(reader: Reader, run_dir: Path, notes: list) -> Iterator[dict]:
    """The reader's records, each checked as the loader will (``validate`` in reader mode)."""
    found = reader.records(run_dir, notes=notes) if _takes_notes(reader) else reader.records(run_dir)
    for i, rec in enumerate(found):
        kind = rec.get("kind") if isinstance(rec, dict) else None
        if i == 0 and kind != "run":
            raise FormatError(run_dir, f"the {reader.name} reader yielded a {kind!r} record first, not a run record")
        if rec.get("schema") != SCHEMA:
            raise FormatError(run_dir, f"the {reader.name} reader yielded a record without schema {SCHEMA!r}")
        try:
            validate(rec, [])
        except SchemaError as exc:
            raise FormatError(run_dir, f"the {reader.name} reader made an invalid {kind} record ({exc})") from None
        yield rec


def convert(runs_dir: Path, run_dir: Path, reader: Reader, rel_dir: str) -> Conversion:
    """Bring ``RUNS_DIR/<converted_rel(rel_dir)>`` up to date with ``run_dir``; raise
    :class:`FormatError` when the run cannot be read (the earlier conversion, if any, stays).

    The first record carries ``converted: {format, source, rewrite}``; ``rewrite`` grows each
    time the log is rewritten rather than appended to, so the loader, which notices a new log by
    the hash of its first bytes, always reads a rewritten log again from its start.
    """
    log = Path(runs_dir) / converted_rel(rel_dir)
    stamp_path = log.with_name(_STAMP)
    try:
        stamp = _stamp_of(reader, run_dir)  # before reading: a file written meanwhile is read again next time
    except Exception as exc:
        raise FormatError(run_dir, f"the {reader.name} reader could not list its files ({type(exc).__name__}: "
                                   f"{exc})") from exc
    old = _read_json(stamp_path)
    if log.is_file() and old is not None and {k: old.get(k) for k in stamp} == stamp:
        return Conversion(log, "unchanged", list(old.get("notes") or []))
    notes: list[str] = []
    given: list = []  # a reader's own notes list, (path, message) pairs or lines
    token = _NOTES.set(notes)
    try:
        with warnings.catch_warnings(record=True) as caught:  # a reader may warn instead of noting
            warnings.simplefilter("always")
            status = _write(log, reader, run_dir, given)
    except FormatError:
        raise
    except Exception as exc:  # a reader's bug or an unreadable file it did not expect: this run only
        raise FormatError(run_dir, f"could not be read as a {reader.name} run ({type(exc).__name__}: {exc})") from exc
    finally:
        _NOTES.reset(token)
    for item in [*given, *(str(w.message) for w in caught)]:
        line = f"{item[0]}: {item[1]}" if isinstance(item, tuple) and len(item) == 2 else str(item)
        if line not in notes:
            notes.append(line)
    tmp = stamp_path.with_name(f".{_STAMP}.tmp")
    try:
        tmp.write_text(json.dumps({**stamp, "notes": notes}, indent=1), encoding="utf-8")
        os.replace(tmp, stamp_path)
    except OSError as exc:  # the log is written: it is converted again next time, no harm
        notes.append(f"{stamp_path}: cannot be written ({exc.strerror or exc}); the run is converted again next time")
    return Conversion(log, status, notes)


def _write(log: Path, reader: Reader, run_dir: Path, notes: list) -> str:
    """Write the records to ``log``: append when the old log is a prefix of the new one."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FormatError(log.parent, f"cannot create the directory for converted logs ({exc.strerror or exc}); "
                                      "make RUNS_DIR writable") from None
    existed = log.is_file()
    rewrite = _rewrites(log) if existed else 0
    tmp = log.with_name(".train.jsonl.tmp")
    first: dict | None = None
    first_len = 0
    with open(tmp, "wb") as out:
        for rec in _checked(reader, run_dir, notes):
            if first is None:
                first = {"schema": SCHEMA, "kind": "run",
                         "converted": {"format": reader.name, "source": str(run_dir), "rewrite": rewrite},
                         **{k: v for k, v in rec.items() if k not in ("schema", "kind")}}
                data = _dumps(first)
                first_len = len(data)
            else:
                data = _dumps(rec)
            out.write(data)
    if first is None:
        tmp.unlink()
        raise FormatError(run_dir, f"the {reader.name} reader found nothing to read")
    new_size = tmp.stat().st_size
    old_size = log.stat().st_size if existed else 0
    if existed and new_size >= old_size and _is_prefix(log, tmp, old_size):
        if new_size == old_size:
            tmp.unlink()
            return "unchanged"
        with open(tmp, "rb") as src, open(log, "ab") as dst:  # the loader reads only the new lines
            src.seek(old_size)
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.unlink()
        return "appended"
    if existed:  # rewritten: a new counter in the first line, so the loader reads it all again
        first["converted"]["rewrite"] = rewrite + 1
        final = log.with_name(".train.jsonl.tmp2")
        with open(tmp, "rb") as src, open(final, "wb") as dst:
            dst.write(_dumps(first))
            src.seek(first_len)
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.unlink()
        tmp = final
    os.replace(tmp, log)
    return "rewritten" if existed else "written"


def _is_prefix(old: Path, new: Path, size: int) -> bool:
    with open(old, "rb") as a, open(new, "rb") as b:
        while size > 0:
            n = min(size, 1 << 20)
            if a.read(n) != b.read(n):
                return False
            size -= n
    return True
