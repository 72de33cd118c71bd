"""Append-only JSONL run logs in the ``rg-tracer/2`` schema (``rg_tracer.schema``).

Each record is one line, written with a single ``write`` and flushed, so a reader
never sees half a record except a last line still missing its newline (which the
ingester leaves for later). The file is created on the first write: a run that fails
before its first step leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rg_tracer.schema import SCHEMA

__all__ = ["JsonlLogger", "json_safe", "drop_torn_tail"]


def json_safe(value: Any) -> Any:
    """Replace NaN/Infinity (not JSON) with ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# Line breaks by Python's str.splitlines() that JSON leaves raw inside strings; escaped
# so that any line-splitting reader sees one record per line.
_RAW_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _record(kind: str, fields: dict) -> dict:
    return {"schema": SCHEMA, "kind": kind, "time": time.time(), **fields}


def _line(kind: str, fields: dict) -> tuple[dict, str]:
    record = _record(kind, fields)
    text = json.dumps(json_safe(record), ensure_ascii=False, allow_nan=False)
    return record, text.translate(_RAW_BREAKS) + "\n"


def drop_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a writer killed mid-line); return bytes removed.

    Such a fragment was never a record, and a resumed run must not glue its first
    record onto it. Readers never consume an unterminated line, so nothing they read
    changes.
    """
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, 2)
            if size == 0:
                return 0
            chunk, end = 65536, size
            while end > 0:
                start = max(0, end - chunk)
                f.seek(start)
                block = f.read(end - start)
                if end == size and block.endswith(b"\n"):
                    return 0
                newline = block.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    f.truncate(keep)
                    return size - keep
                end = start
            f.truncate(0)
            return size
    except FileNotFoundError:
        return 0


class JsonlLogger:
    """Appends records to ``path``, one flushed line each. ``enabled=False`` (a distributed
    run's ranks other than 0) builds and returns the records but writes nothing."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._file = None
        self._staged: list[str] = []

    def stage(self, kind: str, **fields: Any) -> dict:
        """Queue a record to be written just before the next :meth:`write`."""
        if not self.enabled:
            return _record(kind, fields)
        record, line = _line(kind, fields)
        self._staged.append(line)
        return record

    def write(self, kind: str, **fields: Any) -> dict:
        if not self.enabled:  # the record, not encoded: nothing is written
            return _record(kind, fields)
        record, line = _line(kind, fields)
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        for staged in self._staged:
            self._file.write(staged)
        self._staged.clear()
        self._file.write(line)
        self._file.flush()
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

