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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rg_tracer.schema import SCHEMA

__all__ = [
    "AUTO",
    "FORMATS",
    "CONVERTED_DIR",
    "Reader",
    "FormatError",
    "note",
    "record",
    "readers",
    "get_reader",
    "check_format",
    "describe_formats",
    "converted_rel",
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
