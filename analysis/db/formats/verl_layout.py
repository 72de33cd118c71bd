"""Where a verl run keeps its files: the rollout and validation dumps, metrics file and config.

Out of ``verl.py`` (:mod:`analysis.db.formats.verl`, whose docstring describes the layout) so
that the reader stays under ~300 lines: finding and sniffing the files that ``detect``,
``sources`` and ``records`` read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rg_tracer.schema import LOG_NAME

ROLLOUT_DIRS = ("rollout", "rollout_data", "rollouts")
VALIDATION_DIRS = ("validation", "validation_data", "val")
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
_DUMP_NAME = re.compile(r"^(0|[1-9][0-9]{0,12})\.jsonl$")
_FIRST_LINE_LIMIT = 16 << 20


@dataclass
class _Layout:
    rollout: dict[int, Path] = field(default_factory=dict)
    validation: dict[int, Path] = field(default_factory=dict)
    metrics: list[Path] = field(default_factory=list)
    config: Path | None = None
    problems: list[str] = field(default_factory=list)


def _dump_files(folder: Path) -> dict[int, Path]:
    """``{step: path}`` of the ``{step}.jsonl`` files in ``folder`` (none when it is no folder)."""
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return {}
    return {int(p.name[:-6]): p for p in entries if _DUMP_NAME.match(p.name) and p.is_file()}


def _first_object(path: Path) -> Any:
    """The first non-blank line of ``path`` parsed as JSON, or None."""
    try:
        with open(path, "rb") as f:
            for _ in range(4):
                line = f.readline(_FIRST_LINE_LIMIT)
                if not line:
                    return None
                if line.strip():
                    return json.loads(line)
    except (OSError, ValueError, RecursionError):
        return None
    return None


def _is_dump_line(obj: Any) -> bool:
    return isinstance(obj, dict) and all(k in obj for k in ("input", "output", "score", "step"))


def _is_metrics_line(obj: Any) -> bool:
    return (isinstance(obj, dict) and set(obj) == {"step", "data"} and isinstance(obj["data"], dict)
            and isinstance(obj["step"], int) and not isinstance(obj["step"], bool))


def _pick_dump(run_dir: Path, folders: list[Path], what: str, layout: _Layout) -> dict[int, Path]:
    found = [(folder, files) for folder in folders if (files := _dump_files(folder))
             and _is_dump_line(_first_object(files[min(files)]))]
    if len(found) > 1:
        layout.problems.append(f"{what} step files in several folders ({', '.join(str(f) for f, _ in found)}); "
                               f"a verl run directory holds one {what}")
    return found[0][1] if found else {}


def _layout(run_dir: Path) -> _Layout:
    layout = _Layout()
    layout.rollout = _pick_dump(run_dir, [run_dir, *(run_dir / n for n in ROLLOUT_DIRS)], "rollout dump", layout)
    layout.validation = _pick_dump(run_dir, [run_dir / n for n in VALIDATION_DIRS], "validation dump", layout)
    try:
        candidates = sorted(p for p in run_dir.glob("*.jsonl")
                            if p.is_file() and not _DUMP_NAME.match(p.name) and p.name != LOG_NAME)
    except OSError:
        candidates = []
    layout.metrics = [p for p in candidates if _is_metrics_line(_first_object(p))]
    if len(layout.metrics) > 1:
        layout.problems.append(
            f"several verl metrics files ({', '.join(p.name for p in layout.metrics)}); a run directory holds one "
            "run's FileLogger output (VERL_FILE_LOGGER_PATH=<run_dir>/metrics.jsonl)")
    config = run_dir / HYDRA_CONFIG
    layout.config = config if config.is_file() else None
    return layout


def _complete(path: Path) -> bool:
    """A dump file verl has finished writing (it ends every dump with a newline)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        with open(path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"
    except OSError:
        return False
