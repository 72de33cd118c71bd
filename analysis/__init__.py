"""rg-tracer analysis: how each reward axis of a run moved, and what moved first.

Three layers (see docs/analysis.md):

* ingest  — :func:`ingest` loads run logs (JSONL, ``rg-tracer/2``) into DuckDB;
  :func:`open_runs` reads them back as polars DataFrames.
* compute — pure functions over DataFrames: :mod:`analysis.fitness`,
  :mod:`analysis.correlations`, :mod:`analysis.transitions`.
* render  — :mod:`analysis.plots` (matplotlib Figures), :mod:`analysis.report`
  (HTML + summary.json); :func:`analyze_runs` runs all three.

Importing this package does not import torch, nor (until first used) DuckDB,
polars or matplotlib, so ``rg-tracer --help`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["analyze_runs", "ingest", "open_runs", "Runs", "IngestError", "IngestResult"]

_WHERE = {
    "analyze_runs": "analysis.analyze",
    "ingest": "analysis.db",
    "IngestError": "analysis.db",
    "IngestResult": "analysis.db",
    "open_runs": "analysis.db.store",
    "Runs": "analysis.db.store",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
