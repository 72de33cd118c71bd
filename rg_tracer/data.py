"""Read prompt/answer datasets (JSONL) with errors that name the file, line and field.

A row is ``{"id", "task", "prompt", "answer", ...}``; ``prompt`` and ``answer`` are
required, ``id`` defaults to ``<file stem>-<line>`` and ``task`` to ``"default"``.
Every other field (``numbers`` for toy math) is passed to scorers as reference data.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
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


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _field(row: dict, name: str, where: str) -> str:
    if name not in row:
        raise UserError(f"{where}: missing field {name!r}; every row needs 'prompt' and 'answer'")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: field {name!r} must be a string or number, got {type(value).__name__}")
    text = str(value)
    if name == "prompt" and not text:
        raise UserError(f"{where}: field 'prompt' is empty")
    if name == "answer" and _NUMBER.fullmatch(text.strip()) and not math.isfinite(float(text)):
        raise UserError(f"{where}: field 'answer' is a {len(text.strip())}-character number, beyond what scorers "
                        "compare (numbers are compared as floats, below 1e308); shorten it or drop the row")
    return text


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number; write null or a finite number")


def _check_unicode(row: dict, where: str) -> None:
    """Refuse lone surrogates (``"\\ud800"``): valid JSON escapes, but no valid text; tokenizers
    and the UTF-8 log cannot take them."""
    for key, value in row.items():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UserError(f"{where}: field {key!r} holds a lone surrogate ({exc.object[exc.start:exc.end]!a}), "
                            "which is not text; escape a character as a pair (\\ud83d\\ude00) or as UTF-8") from None


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
            row = json.loads(line, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits, NaN
            reason = str(exc).splitlines()[0] if str(exc) else "nested too deeply"
            if reason.startswith("Exceeds the limit"):  # Python reads integers of at most 4300 digits
                reason = "a number has more than 4300 digits"
            raise UserError(f"{where}: not valid JSON ({reason}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
        _check_unicode(row, where)
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
