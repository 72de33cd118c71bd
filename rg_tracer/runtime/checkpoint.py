"""Checkpoints without pickles, written atomically.

Layout: ``<run>/checkpoints/step-000010/`` holding the model and tokenizer
(``save_pretrained``, safetensors), ``optimizer.safetensors`` (tensor state),
``optimizer.json`` (hyper-parameters and scalars), ``trainer_state.json`` and, when the
run keeps other tensor state (the slow-gradient EMA), ``extra.safetensors``.
Each is written into a temporary directory that is renamed into place last, so a
crash mid-write leaves a ``.tmp-*`` directory that is never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "latest_checkpoint", "load_optimizer_state", "load_extra_tensors",
           "read_trainer_state"]

_STATE_FILE = "trainer_state.json"


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, trainer_state: dict,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tensors, meta = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    if extra_tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}, tmp / "extra.safetensors")
    (tmp / _STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    # complete: the trainer state is written last, and the weights are there (under torch.distributed
    # transformers writes them on rank 0 only, so a directory another rank wrote has none)
    done = [p for p in root.glob("step-*") if (p / _STATE_FILE).is_file() and _has_weights(p)] if root.is_dir() else []
    return max(done, key=lambda p: p.name) if done else None


def _has_weights(checkpoint: Path) -> bool:
    return any(checkpoint.glob("model*.safetensors")) or any(checkpoint.glob("pytorch_model*.bin"))


def read_trainer_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / _STATE_FILE).read_text())


def load_extra_tensors(checkpoint: Path, device: torch.device) -> dict[str, torch.Tensor]:
    path = Path(checkpoint) / "extra.safetensors"
    return load_file(str(path), device=str(device)) if path.is_file() else {}


def load_optimizer_state(checkpoint: Path, device: torch.device) -> dict:
    meta = json.loads((Path(checkpoint) / "optimizer.json").read_text())
    state: dict[int, dict] = {}
    for key, tensor in load_file(str(Path(checkpoint) / "optimizer.safetensors"), device=str(device)).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = tensor
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}
