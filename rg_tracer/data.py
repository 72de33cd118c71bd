"""Read prompt/answer datasets (JSONL) with errors that name the file, line and field.

A row is ``{"id", "task", "prompt", "answer", ...}``; ``prompt`` and ``answer`` are
required, ``id`` defaults to ``<file stem>-<line>`` and ``task`` to ``"default"``.
Every other field (``numbers`` for toy math) is passed to scorers as reference data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rg_tracer.errors import UserError

__all__ = ["Example", "Dataset", "load_dataset", "resolve_eval_path"]


@dataclass(frozen=True)
class Example:
    id: str
    task: str
    prompt: str
    answer: str
    row: dict


@dataclass(frozen=True)
class Dataset:
    path: Path
    examples: tuple[Example, ...]
    sha256: str

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "rows": len(self.examples)}


def _field(row: dict, name: str, where: str) -> str:
    if name not in row:
        raise UserError(f"{where}: missing field {name!r}; every row needs 'prompt' and 'answer'")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: field {name!r} must be a string or number, got {type(value).__name__}")
    text = str(value)
    if name == "prompt" and not text:
        raise UserError(f"{where}: field 'prompt' is empty")
    return text


def load_dataset(path: str | Path) -> Dataset:
    """Load and check every row; the first bad row raises :class:`UserError`."""
    path = Path(path)
    if path.is_dir():
        if (path / "train.jsonl").is_file():
            path = path / "train.jsonl"
        else:
            raise UserError(f"{path} is a directory without train.jsonl; pass a JSONL file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read dataset {path}: {exc.strerror}") from exc
    examples, seen = [], set()
    for lineno, line in enumerate(raw.splitlines(), start=1):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{where}: not valid JSON ({exc}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
        prompt, answer = _field(row, "prompt", where), _field(row, "answer", where)
        ex_id = str(row.get("id", f"{path.stem}-{lineno}"))
        if ex_id in seen:
            raise UserError(f"{where}: duplicate id {ex_id!r}; ids must be unique within a file")
        seen.add(ex_id)
        examples.append(Example(ex_id, str(row.get("task", "default")), prompt, answer, row))
    if not examples:
        raise UserError(f"{path}: no rows; a dataset needs at least one JSON object per line")
    return Dataset(path, tuple(examples), hashlib.sha256(raw).hexdigest())


def resolve_eval_path(train_path: str | Path, eval_path: str | Path | None) -> Path | None:
    """The held-out file: ``eval_path`` if given, else ``<stem>_test.jsonl`` beside the train file."""
    if eval_path:
        return Path(eval_path)
    train_path = Path(train_path)
    if train_path.is_dir():
        train_path = train_path / "train.jsonl"
    for candidate in (
        train_path.with_name(f"{train_path.stem}_test.jsonl"),
        train_path.with_name("test.jsonl") if train_path.name == "train.jsonl" else None,
    ):
        if candidate is not None and candidate.is_file():
            return candidate
    return None
