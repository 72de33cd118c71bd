"""EGGROLL: low-rank evolution strategies over rg-tracer's reward vectors, and fitness export.

* :mod:`.lowrank`  — perturbations ``σ/√r · A Bᵀ`` applied in the forward, seeded, and the update.
* :mod:`.shaping`  — ``none`` / ``zscore`` / ``centered_rank``, shared by search and export.
* :mod:`.members`  — one generation's member fitness through scorer -> feedback -> mixer.
* :mod:`.search`   — the loop behind ``rg-tracer eggroll``.
* :mod:`.export`   — ``rg-tracer fitness export``.

``docs/eggroll.md`` is the user guide.
"""

from rg_tracer.eggroll.config import EggrollConfig
from rg_tracer.eggroll.lowrank import (
    Layer,
    Population,
    dense_delta,
    es_update,
    find_layers,
    perturbed,
    tile_members,
)
from rg_tracer.eggroll.shaping import SHAPINGS, centered_rank, shape_fitness, zscore

__all__ = [
    "EggrollConfig",
    "Layer",
    "Population",
    "SHAPINGS",
    "centered_rank",
    "dense_delta",
    "es_update",
    "find_layers",
    "perturbed",
    "shape_fitness",
    "tile_members",
    "zscore",
]
