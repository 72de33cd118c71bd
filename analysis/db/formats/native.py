"""rg-tracer's own format: ``<run_dir>/train.jsonl`` (``docs/log_schema.md``).

The loader reads these logs directly (``analysis/db/_load.py``), never through :func:`records`;
the reader is here so that detection and ``--format`` treat every format alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from analysis.db.formats import FormatError, Reader
from rg_tracer.schema import LOG_NAME

__all__ = ["READER"]


def _logs(run_dir: Path) -> list[Path]:
    from analysis.logfiles import looks_like_dataset, not_regular

    try:
        names = sorted(p for p in Path(run_dir).iterdir() if p.name.endswith(".jsonl") and not p.name.startswith("."))
    except OSError:
        return []
    return [p for p in names if not not_regular(p) and not looks_like_dataset(p)]


def detect(run_dir: Path) -> bool:
    """A directory holding ``train.jsonl``."""
    return (Path(run_dir) / LOG_NAME).is_file()


def sources(run_dir: Path) -> list[Path]:
    return _logs(run_dir)


def records(run_dir: Path) -> Iterator[dict]:
    """The valid records of ``train.jsonl`` (bad lines left out; the loader lists them)."""
    from analysis.logfiles import check_line

    path = Path(run_dir) / LOG_NAME
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise FormatError(path, f"cannot be read ({exc.strerror or exc})") from None
    with f:
        for raw in f:
            record = check_line(raw)
            if isinstance(record, dict):
                yield record


READER = Reader(name="rg-tracer", detect=detect, sources=sources, records=records,
                describe="<run_dir>/train.jsonl, or any *.jsonl log")
