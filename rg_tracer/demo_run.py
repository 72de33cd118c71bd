"""The demo's tiny model and a short training run with the demo settings, written once.

``scripts/demo.py`` (``make demo``), the three notebooks, ``tests/test_demo_learns.py`` and the
notebooks' test fixture all build the same randomly initialised Qwen2 (:data:`DEMO_MODEL`) and
train it with ``configs/demo/train.yaml`` plus their own overrides (steps, eval interval,
dataset, output directory...). Each used to spell out the model shape and the config path;
a change to either now happens here, for all of them.

Layout: ``work_dir/"model"`` holds the model. :func:`demo_run` builds it and trains it;
:func:`build_demo_model` and :func:`train_demo` are its two halves, for a caller that does
something between them (prints the parameter count, runs an EGGROLL search from the same
initial weights). Importing this module does not import torch, transformers or
``rg_tracer.dapo``; they load when a function runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rg_tracer.models import TinyModelSpec

if TYPE_CHECKING:
    from rg_tracer.dapo.trainer import DAPOHybridTrainer

__all__ = ["DEMO_MODEL", "build_demo_model", "demo_run", "repo_root", "runs_from_env", "train_demo"]

#: the demo's model: 2 layers, hidden 64, 4 heads, ~137k parameters with the char tokenizer
DEMO_MODEL = TinyModelSpec(arch="qwen2", layers=2, hidden=64, heads=4)

#: the demo's training settings, relative to the repository root
DEMO_CONFIG = "configs/demo/train.yaml"


def repo_root() -> Path:
    """The rg-tracer checkout: the first folder above the working directory that holds
    pyproject.toml and rg_tracer/ (a notebook's working directory is its folder), else the
    checkout of the installed package."""
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "pyproject.toml").is_file() and (folder / "rg_tracer").is_dir():
            return folder
    import rg_tracer  # an editable install knows where its checkout is

    return Path(rg_tracer.__file__).resolve().parent.parent


def runs_from_env(variable: str = "RG_TRACER_RUNS") -> Path | None:
    """The runs directory a notebook was pointed at (``None`` when unset), absolute. A relative
    path is taken from the working directory when it exists there, else from the checkout:
    Jupyter starts a notebook's kernel in ``notebooks/``, while users write paths from the
    repository root (``RG_TRACER_RUNS=runs/ jupyter lab notebooks/``)."""
    value = os.environ.get(variable)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.exists():
        path = repo_root() / path
    if not path.exists():
        raise FileNotFoundError(f"{variable}={value}: no such directory (tried {Path.cwd() / value} and {path})")
    return path.resolve()


def build_demo_model(work_dir: str | Path, seed: int = 0) -> int:
    """Save a randomly initialised :data:`DEMO_MODEL` (initialised from ``seed``) to
    ``work_dir/"model"`` (which must be missing or empty) with transformers' progress bars and
    warnings off; return #parameters."""
    import dataclasses

    from rg_tracer.models import init_model, quiet_transformers

    quiet_transformers()
    return init_model(Path(work_dir) / "model", dataclasses.replace(DEMO_MODEL, seed=seed))


def train_demo(work_dir: str | Path, **overrides: Any) -> DAPOHybridTrainer:
    """Train ``work_dir/"model"`` with ``configs/demo/train.yaml`` and ``overrides`` (any
    :class:`~rg_tracer.dapo.config.TrainConfig` option) on top; return the trainer."""
    from rg_tracer.dapo import train
    from rg_tracer.dapo.config import TrainConfig

    config = TrainConfig.from_file(str(repo_root() / DEMO_CONFIG), model=str(Path(work_dir) / "model"), **overrides)
    return train(config)


def demo_run(work_dir: str | Path, **overrides: Any) -> DAPOHybridTrainer:
    """:func:`build_demo_model` then :func:`train_demo`: the demo's model, trained with the
    demo settings and ``overrides``; returns the trainer (``step``, ``config``, ``run.log_path``)."""
    build_demo_model(work_dir)
    return train_demo(work_dir, **overrides)
