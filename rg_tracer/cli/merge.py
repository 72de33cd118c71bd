"""``rg-tracer merge``: fold a ``--lora`` checkpoint's adapter into its base model."""

from __future__ import annotations

from pathlib import Path

import click

from rg_tracer.cli.common import user_errors
from rg_tracer.models import quiet_transformers

__all__ = ["merge_command"]


@click.command("merge")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New (or empty) directory for the merged model and its tokenizer.")
@click.option("--base", default=None,
              help="Base model the adapter was trained on [default: the run's --model, from trainer_state.json].")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Dtype the base is loaded, merged and saved in (auto: the base's saved dtype).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the base model's own code from the hub (off by default).")
@user_errors
def merge_command(source: Path, out_dir: Path, base: str | None, dtype: str, trust_remote_code: bool) -> None:
    """Merge the LoRA adapter of SOURCE (a checkpoint, or a run directory: its newest checkpoint)
    into the base weights and save a plain model to --out (safetensors, loads with --model).

    \b
    Example:
        rg-tracer train --model Qwen/Qwen2.5-0.5B-Instruct --lora ... --output-dir runs/lora
        rg-tracer merge runs/lora --out runs/lora-merged
        rg-tracer train --model runs/lora-merged ...
    """
    from rg_tracer.runtime.lora_merge import merge_checkpoint

    quiet_transformers()
    checkpoint, used = merge_checkpoint(source, out_dir, base=base, dtype=dtype, trust_remote_code=trust_remote_code)
    click.echo(f"merged {checkpoint} into {used}: written to {out_dir}; use it with --model {out_dir}")
