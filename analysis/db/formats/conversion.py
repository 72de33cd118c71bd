"""Conversion of a foreign run into an rg-tracer log, kept up to date: :func:`convert`.

Out of the format registry (:mod:`analysis.db.formats`, whose docstring describes the converted
logs under ``RUNS_DIR/.rg-tracer/converted``) so that it stays under ~300 lines: writing a
reader's records to the converted log, with the ``source.json`` stamp that says when the run must
be converted again and the append-or-rewrite decision, is a concern of its own.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from analysis.db.formats import _NOTES, FormatError, Reader, converted_rel
from rg_tracer.schema import SCHEMA, SchemaError, validate

__all__ = ["Conversion", "convert"]

_STAMP = "source.json"


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
