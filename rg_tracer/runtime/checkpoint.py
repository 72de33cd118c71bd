"""Checkpoints without pickles, written atomically.

Layout: ``<run>/checkpoints/step-000010/`` holding the model and tokenizer
(``save_pretrained``, safetensors; with ``--lora`` the model is the adapter alone,
``adapter_config.json`` and ``adapter_model.safetensors``), ``optimizer.safetensors`` (tensor state),
``optimizer.json`` (hyper-parameters and scalars), ``trainer_state.json`` and, when the
run keeps other tensor state (the slow-gradient EMA), ``extra.safetensors``.
Each is written into a temporary directory, with ``manifest.json`` (every file's size) last;
the files and the directory are fsynced, then it is renamed into place, so a crash mid-write
leaves a ``.tmp-*`` directory that is never loaded (:func:`remove_stale` deletes it later) and
a power cut cannot leave a renamed directory with empty files.

:func:`check_checkpoint` reads a checkpoint's structure without loading it (sizes against the
manifest, every JSON file, every safetensors header, the trainer state's step) and raises
:class:`CheckpointError` naming the first bad file; :func:`set_aside` renames a bad one to
``corrupt-step-*``; :func:`prune_checkpoints` keeps the newest N.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "latest_checkpoint", "load_optimizer_state", "load_extra_tensors",
           "read_trainer_state", "CheckpointError", "checkpoints", "check_checkpoint", "set_aside",
           "remove_stale", "prune_checkpoints", "disk_full", "holds_adapter"]

_STATE_FILE = "trainer_state.json"
_MANIFEST = "manifest.json"
_PREFIX = "step-"
_ADAPTER_CONFIG, _ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # --lora (peft)


class CheckpointError(Exception):
    """A checkpoint that cannot be used: ``file`` is the first bad file (or the directory)."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = Path(file), reason


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or quota. safetensors and tokenizers
    raise their own types with the OS message inside, hence the text test."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(exc) for s in ("No space left on device", "Disk quota exceeded", "StorageFull")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    final = root / f"{_PREFIX}{step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        # a peft model (--lora) saves its adapter alone; never the embedding matrices, which peft's
        # default ("auto") decides by fetching the base model's config from the hub at every save
        model.save_pretrained(tmp, **({"save_embedding_layers": False} if hasattr(model, "peft_config") else {}))
        tokenizer.save_pretrained(tmp)
        tensors, meta = _split_optimizer_state(optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        if extra_tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}, tmp / "extra.safetensors")
        (tmp / _STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=1))
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        (tmp / _MANIFEST).write_text(json.dumps({p.name: p.stat().st_size for p in files}, indent=1))
        for path in [*files, tmp / _MANIFEST, tmp]:
            _fsync(path)
    except BaseException:  # a full disk, Ctrl-C: no half checkpoint stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # a step saved again (a resume from an earlier checkpoint): swap, then delete
        old = root / f".tmp-{final.name}-replaced-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(root)  # the rename itself
    return final


def _step_of(path: Path) -> int:
    try:
        return int(path.name[len(_PREFIX):])
    except ValueError:
        return -1


def checkpoints(run_dir: Path) -> list[Path]:
    """The ``step-*`` directories under ``run_dir/checkpoints``, newest (highest step) first."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and _step_of(p) >= 0] if root.is_dir() else []
    return sorted(found, key=_step_of, reverse=True)


def remove_stale(run_dir: Path) -> None:
    """Delete the ``.tmp-*`` directories a save (or a rotation) killed half-way left behind."""
    root = Path(run_dir) / "checkpoints"
    for tmp in root.glob(".tmp-*") if root.is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints (0: all). Each older one is renamed to ``.tmp-*``
    first, so a kill mid-delete leaves nothing that looks like a checkpoint."""
    for old in checkpoints(run_dir)[keep:] if keep else ():
        doomed = old.with_name(f".tmp-{old.name}-deleting")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def set_aside(checkpoint: Path) -> Path:
    """Rename a bad checkpoint to ``corrupt-step-*`` (kept for inspection, never loaded)."""
    target, n = checkpoint.with_name(f"corrupt-{checkpoint.name}"), 1
    while target.exists():
        n += 1
        target = checkpoint.with_name(f"corrupt-{checkpoint.name}-{n}")
    os.replace(checkpoint, target)
    return target


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(path, "is missing") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(path, "is not valid JSON (truncated or corrupt)") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "is not a JSON object (corrupt)")
    return data


def _check_safetensors(path: Path) -> None:
    """The header parses and the tensors it describes end where the file ends."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
        raise CheckpointError(path, f"is not a valid safetensors file ({size} bytes; truncated or corrupt)") from None
    if 8 + n + end != size:
        raise CheckpointError(path, f"has {size} bytes but its header describes {8 + n + end} (truncated or corrupt)")


def check_checkpoint(checkpoint: Path) -> dict:
    """Check ``checkpoint``'s files without loading the model; return its trainer state.
    Raises :class:`CheckpointError` naming the first bad file."""
    checkpoint = Path(checkpoint)
    if (checkpoint / _MANIFEST).exists():  # checkpoints written before the manifest have none
        for name, size in _read_json(checkpoint / _MANIFEST).items():
            path = checkpoint / name
            if not path.is_file():
                raise CheckpointError(path, "is missing")
            if path.stat().st_size != size:
                raise CheckpointError(path, f"has {path.stat().st_size} bytes, {size} were written (truncated or changed)")
    adapter = holds_adapter(checkpoint)
    for name in (_ADAPTER_CONFIG if adapter else "config.json", "optimizer.json", "optimizer.safetensors", _STATE_FILE):
        if not (checkpoint / name).is_file():
            raise CheckpointError(checkpoint / name, "is missing")
    if adapter and not (checkpoint / _ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(checkpoint / _ADAPTER_WEIGHTS, "is missing (no adapter weights)")
    if not adapter and not _has_weights(checkpoint):
        raise CheckpointError(checkpoint / "model.safetensors", "is missing (no model weights)")
    for path in sorted(checkpoint.glob("*.json")):
        _read_json(path)
    for path in sorted(checkpoint.glob("*.safetensors")):
        _check_safetensors(path)
    meta = _read_json(checkpoint / "optimizer.json")
    if not isinstance(meta.get("param_groups"), list) or not isinstance(meta.get("scalars"), dict):
        raise CheckpointError(checkpoint / "optimizer.json", "lacks 'param_groups' or 'scalars' (corrupt)")
    state = _read_json(checkpoint / _STATE_FILE)
    step = state.get("step")
    if step != _step_of(checkpoint):
        raise CheckpointError(checkpoint / _STATE_FILE, f"says step {step!r}, the directory step {_step_of(checkpoint)}")
    kinds = {"kl_coeff": (int, float), "curriculum": dict, "safety": dict}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(checkpoint / _STATE_FILE, f"lacks a valid {key!r} (corrupt)")
    if bool((state.get("config") or {}).get("lora")) != adapter:
        held = "an adapter" if adapter else "full weights"
        raise CheckpointError(checkpoint / _STATE_FILE, f"says the run trained {'without' if adapter else 'with'} "
                                                        f"--lora, but the checkpoint holds {held} (corrupt)")
    return state


def holds_adapter(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` holds a LoRA adapter (``--lora``) rather than full weights: its adapter
    files, or, both missing, its trainer state saying so."""
    checkpoint = Path(checkpoint)
    if (checkpoint / _ADAPTER_CONFIG).is_file() or (checkpoint / _ADAPTER_WEIGHTS).is_file():
        return True
    try:
        return bool(json.loads((checkpoint / _STATE_FILE).read_bytes())["config"]["lora"])
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
        return False


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that looks complete (its trainer state and weights are there; under
    torch.distributed transformers writes weights on rank 0 only). :func:`check_checkpoint` checks more."""
    return next((p for p in checkpoints(run_dir) if (p / _STATE_FILE).is_file() and _has_weights(p)), None)


def _has_weights(checkpoint: Path) -> bool:
    return (any(checkpoint.glob("model*.safetensors")) or any(checkpoint.glob("pytorch_model*.bin"))
            or (checkpoint / _ADAPTER_WEIGHTS).is_file())


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
