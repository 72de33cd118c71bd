"""Append-only JSONL run logs in the ``rg-tracer/1`` schema (``rg_tracer.schema``).

Each record is one line, written with a single ``write`` and flushed, so a reader
never sees half a record except a last line still missing its newline (which the
ingester leaves for later). The file is created on the first write: a run that fails
before its first step leaves nothing behind. ``NullLogger`` keeps the training loop
free of ``if logging:`` branches.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rg_tracer.schema import SCHEMA

__all__ = ["JsonlLogger", "NullLogger", "json_safe"]


def json_safe(value: Any) -> Any:
    """Replace NaN/Infinity (not JSON) with ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _line(kind: str, fields: dict) -> tuple[dict, str]:
    record = {"schema": SCHEMA, "kind": kind, "time": time.time(), **fields}
    return record, json.dumps(json_safe(record), ensure_ascii=False, allow_nan=False) + "\n"


class JsonlLogger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = None
        self._staged: list[str] = []

    def stage(self, kind: str, **fields: Any) -> dict:
        """Queue a record to be written just before the next :meth:`write`."""
        record, line = _line(kind, fields)
        self._staged.append(line)
        return record

    def write(self, kind: str, **fields: Any) -> dict:
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


class NullLogger:
    path = None

    def stage(self, kind: str, **fields: Any) -> dict:
        return self.write(kind, **fields)

    def write(self, kind: str, **fields: Any) -> dict:
        return {"schema": SCHEMA, "kind": kind, **fields}

    def close(self) -> None:
        pass
