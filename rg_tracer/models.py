"""Build tiny models locally, and load models by hub name or directory.

Tests and the demo cannot reach a model hub, so ``init_model`` builds a randomly
initialised GPT-2, Llama or Qwen2 with a character tokenizer and saves both with
``save_pretrained``. ``load_model`` takes a local directory or a hub name; a hub
name with no network fails in seconds (transformers itself retries for ~50 s).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from rg_tracer.errors import UserError

__all__ = ["ARCHS", "TinyModelSpec", "init_model", "load_model", "quiet_transformers", "resolve_device"]

ARCHS = ("gpt2", "llama", "qwen2")


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a randomly initialised model; defaults give ~0.2M parameters."""

    arch: str = "qwen2"
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    max_positions: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UserError(f"unknown --arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        for name in ("layers", "hidden", "heads", "max_positions"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise UserError(
                f"--hidden {self.hidden} must be divisible by --heads {self.heads} "
                f"(e.g. --hidden {self.heads * max(1, self.hidden // self.heads)})"
            )


def _config(spec: TinyModelSpec, tokenizer):
    import transformers as tf

    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.arch == "gpt2":
        # Dropout off: the reference and old log-probs must be deterministic (ratio == 1).
        return tf.GPT2Config(
            n_layer=spec.layers, n_embd=spec.hidden, n_head=spec.heads,
            n_positions=spec.max_positions, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, **ids,
        )
    cls = tf.LlamaConfig if spec.arch == "llama" else tf.Qwen2Config
    return cls(
        num_hidden_layers=spec.layers, hidden_size=spec.hidden,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        intermediate_size=spec.hidden * 4, max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True, attention_dropout=0.0, **ids,
    )


def init_model(out_dir: str | Path, spec: TinyModelSpec, alphabet: str | None = None, number_tokens: int = 0) -> int:
    """Save a randomly initialised model and char tokenizer to ``out_dir``; return #params."""
    import torch
    from transformers import AutoModelForCausalLM

    from rg_tracer.char_tokenizer import DEFAULT_ALPHABET, build_char_tokenizer

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty; choose a new directory or remove it first")
    tokenizer = build_char_tokenizer(alphabet or DEFAULT_ALPHABET, number_tokens)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(_config(spec, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def resolve_device(name: str):
    """``auto`` (CUDA when present, else CPU) or a torch device name, checked."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name!r} but no CUDA device is available; use --device cpu")
    return device


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and warnings in command-line output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _local_tokenizer(directory: str, kwargs: dict):
    """AutoTokenizer, except for a generic ``tokenizer.json`` (ours from ``init_model``).

    transformers 5 maps ``model_type`` to a model-specific tokenizer class that rebuilds its
    own pre-tokenizer (Qwen2's drops spaces and splits numbers), ignoring the saved one; a
    tokenizer saved as the generic class is loaded as exactly what ``tokenizer.json`` says.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(directory) / "tokenizer_config.json"
    declared = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    if declared in _GENERIC_TOKENIZERS and (Path(directory) / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory, **kwargs)


_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_model(name_or_path: str, *, trust_remote_code: bool = False):
    """Return ``(model, tokenizer)`` from a directory or hub name, tokenizer left-padding."""
    from transformers import AutoModelForCausalLM

    local = Path(name_or_path).is_dir()
    kwargs = dict(trust_remote_code=trust_remote_code)
    try:
        if local:
            tokenizer = _local_tokenizer(name_or_path, kwargs)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        else:
            tokenizer, model = _load_from_hub(name_or_path, kwargs)
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        where = "directory" if local else "model"
        raise UserError(f"could not load {where} {name_or_path!r}: {str(exc).splitlines()[0]}") from exc
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _load_from_hub(name: str, kwargs: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # a model already in the local cache loads without the network
        return (
            AutoTokenizer.from_pretrained(name, local_files_only=True, **kwargs),
            AutoModelForCausalLM.from_pretrained(name, local_files_only=True, **kwargs),
        )
    except OSError:
        pass
    if not _hub_reachable():
        raise UserError(
            f"model {name!r} is not a local directory and could not be fetched from the "
            "Hugging Face Hub (no network); build a local one with "
            "`rg-tracer init-model runs/tiny-model --arch qwen2` and pass --model runs/tiny-model"
        )
    return (
        AutoTokenizer.from_pretrained(name, **kwargs),
        AutoModelForCausalLM.from_pretrained(name, **kwargs),
    )
