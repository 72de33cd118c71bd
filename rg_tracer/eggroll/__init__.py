"""EGGROLL: low-rank evolution strategies over rg-tracer's reward vectors, and fitness export.

* :mod:`.lowrank`  — perturbations ``σ/√r · A Bᵀ`` applied in the forward, seeded, and the update.
* :mod:`.shaping`  — ``none`` / ``zscore`` / ``centered_rank``, shared by search and export.
* :mod:`.members`  — one generation's member fitness through scorer -> feedback -> mixer.
* :mod:`.search`   — the loop behind ``rg-tracer eggroll``.
* :mod:`.export`   — ``rg-tracer fitness export``.

``docs/eggroll.md`` is the user guide. Names are imported on first use, so that
``rg_tracer.cli.eggroll`` (and ``rg-tracer --help``) does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EggrollConfig": "config",
    "Layer": "lowrank",
    "Population": "lowrank",
    "dense_delta": "lowrank",
    "es_update": "lowrank",
    "find_layers": "lowrank",
    "perturbed": "lowrank",
    "tile_members": "lowrank",
    "SHAPINGS": "shaping",
    "centered_rank": "shaping",
    "shape_fitness": "shaping",
    "zscore": "shaping",
    "es_step": "search",
    "export_fitness": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
