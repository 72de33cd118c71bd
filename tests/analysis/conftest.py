"""Fixtures for the analysis tests (synthetic logs live in synth.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).parent))  # `import synth` from the test modules

from synth import known_run, write_log  # noqa: E402


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def known_report(tmp_path_factory) -> dict:
    """One analyze of two runs with planted structure, shared by the report tests."""
    from analysis import analyze_runs

    root = tmp_path_factory.mktemp("known")
    runs = root / "runs"
    write_log(runs / "exp1" / "train.jsonl", known_run())
    write_log(runs / "sweep" / "lr-2" / "train.jsonl", known_run(steps=160, change_at=60, lead=2, seed=3))
    index = analyze_runs(runs, root / "reports")
    return {"runs": runs, "out": root / "reports", "index": index}
