"""Shared fixtures: tiny randomly initialised models built locally, once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Build one tiny model per architecture on demand: ``tiny_model_dir("gpt2")``."""
    from rg_tracer.models import TinyModelSpec, init_model

    built = {}

    def build(arch: str = "qwen2"):
        if arch not in built:
            path = tmp_path_factory.mktemp(f"model-{arch}")
            init_model(path, TinyModelSpec(arch=arch, layers=1, hidden=32, heads=2, seed=1))
            built[arch] = path
        return built[arch]

    return build
