"""``rg-tracer merge``: fold a ``--lora`` checkpoint's adapter into its base model (peft's
``merge_and_unload``) and save a plain model, written into a temporary directory and renamed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rg_tracer.errors import UserError
from rg_tracer.runtime.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, _first_line, _quiet, require_peft

__all__ = ["merge_checkpoint"]


def _resolve_checkpoint(path: Path) -> Path:
    """``path`` itself when it is a checkpoint, else the newest checkpoint of the run in ``path``."""
    from rg_tracer.runtime.checkpoint import checkpoints

    if (path / "trainer_state.json").is_file() or (path / ADAPTER_CONFIG).is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{path} does not exist; pass a checkpoint (RUN/checkpoints/step-N) or a run directory")
    found = checkpoints(path)
    if not found:
        raise UserError(f"{path} is neither a checkpoint nor a run directory with checkpoints (no "
                        f"{path / 'checkpoints'}/step-*); pass RUN/checkpoints/step-N or RUN")
    return found[0]


def merge_checkpoint(source: Path, out: Path, base: str | None = None, dtype: str = "auto",
                     trust_remote_code: bool = False) -> tuple[Path, str]:
    """Fold the adapter of ``source`` (a checkpoint, or a run directory: its newest checkpoint)
    into its base model (``base``, default: the run's ``--model``) and save the result with its
    tokenizer in ``out`` (must be absent or empty), written into a temporary directory and
    renamed, so a failure leaves nothing behind. ``dtype``: the dtype the base is loaded, merged
    and saved in (``auto``: the base model's saved dtype, so the merged model is the base's size).
    Returns the checkpoint used and the base."""
    from rg_tracer.models import _local_tokenizer, load_model, saved_config
    from rg_tracer.runtime.checkpoint import CheckpointError, check_checkpoint
    from rg_tracer.runtime.precision import DTYPES, saved_dtype

    source, out = Path(source), Path(out)
    checkpoint = _resolve_checkpoint(source)
    if not (checkpoint / ADAPTER_CONFIG).is_file() and not (checkpoint / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{checkpoint} holds full weights (the run trained without --lora): it needs no merge; "
                        f"load it as it is with --model {checkpoint}")
    try:
        state = check_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise UserError(f"merge: {exc}; pass an earlier checkpoint (RUN/checkpoints/step-N)") from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} is not empty; choose a new directory or remove it first")
    base = base or (state.get("config") or {}).get("model")
    if not base:
        raise UserError(f"{checkpoint / 'trainer_state.json'} names no base model; pass --base MODEL")
    peft = require_peft()
    saved = saved_dtype(saved_config(base, trust_remote_code)) if dtype == "auto" else dtype
    if saved not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    model, _ = load_model(base, trust_remote_code=trust_remote_code, dtype=DTYPES[saved])
    with _quiet():
        try:
            peft_model = peft.PeftModel.from_pretrained(model, str(checkpoint))
        except (RuntimeError, ValueError) as exc:
            detail = next((x.strip() for x in str(exc).splitlines() if "size mismatch" in x), _first_line(exc))
            raise UserError(f"merge: the adapter in {checkpoint} does not fit the base {base} ({detail}); pass the "
                            "model the run trained as --base") from None
        merged = peft_model.merge_and_unload()
    tokenizer = _local_tokenizer(str(checkpoint), {"trust_remote_code": trust_remote_code})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "merged_from.json").write_text(json.dumps(
            {"checkpoint": str(checkpoint.resolve()), "base": base, "step": state.get("step"), "dtype": saved}, indent=1))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return checkpoint, base
