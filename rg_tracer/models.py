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
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from rg_tracer.errors import UserError
from rg_tracer.options import SEED_LIMIT

__all__ = ["ARCHS", "TinyModelSpec", "init_model", "load_model", "quiet_transformers", "resolve_device",
           "check_context", "saved_config"]

ARCHS = ("gpt2", "llama", "qwen2")
#: Device types a run can compute on (``meta`` holds shapes only, no numbers).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


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
        if not 0 <= self.seed < SEED_LIMIT:
            raise UserError(f"--seed {self.seed} must be in [0, 2**64): torch seeds are 64-bit")
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
    if device.type not in DEVICE_TYPES:
        held = " (it holds shapes, no numbers)" if device.type == "meta" else ""
        raise UserError(f"--device {name!r}: a run cannot compute on {device.type}{held}; "
                        f"use auto, {', '.join(DEVICE_TYPES)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name!r} but no CUDA device is available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name!r} but MPS (Apple GPU) is not available; use --device cpu")
    if device.type == "xpu" and not torch.xpu.is_available():
        raise UserError(f"--device {name!r} but no XPU device is available; use --device cpu")
    count = {"cuda": torch.cuda.device_count, "xpu": torch.xpu.device_count}.get(device.type)
    if count and device.index is not None and device.index >= count():
        raise UserError(f"--device {name!r}: there are {count()} {device.type} device(s), numbered from 0")
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


def load_model(name_or_path: str, *, trust_remote_code: bool = False, dtype=None):
    """Return ``(model, tokenizer)`` from a directory or hub name, tokenizer left-padding;
    the weights in ``dtype`` (a torch dtype; default: as saved)."""
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    local = Path(name_or_path).is_dir()
    kwargs = dict(trust_remote_code=trust_remote_code)
    weights = {} if dtype is None else {"dtype": dtype}
    where = "directory" if local else "model"
    if local:
        _refuse_pickled_weights(Path(name_or_path))
    try:
        if local:
            tokenizer = _local_tokenizer(name_or_path, kwargs)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True, **weights, **kwargs)
        else:
            tokenizer, model = _load_from_hub(name_or_path, kwargs, weights)
    except UserError:
        raise
    except SafetensorError as exc:
        raise UserError(f"could not load {where} {name_or_path!r}: its safetensors weights are corrupt "
                        f"({str(exc).splitlines()[0]}); save the model again") from None
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"could not load {where} {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def positions_of(model_config) -> int | None:
    """The longest sequence a model's config says it holds (``max_position_embeddings``; GPT-2's
    ``n_positions``), or ``None`` when it names none."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def saved_config(name: str, trust_remote_code: bool = False):
    """The model's config from disk (a directory or the hub cache), no weights, no tokenizer;
    ``None`` when it is not on disk or does not load (:func:`load_model` says why later)."""
    from transformers import AutoConfig

    local = {} if Path(name).is_dir() else {"local_files_only": True}
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **local)
    except Exception:  # best effort: any failure here is reported by load_model, as one line
        return None


def _config_and_tokenizer(name: str, trust_remote_code: bool):
    """The model's config and tokenizer from disk (a directory or the hub cache), without weights;
    ``(None, None)`` when they are not on disk or do not load (:func:`load_model` says why later)."""
    from transformers import AutoTokenizer

    config = saved_config(name, trust_remote_code)
    if config is None:
        return None, None
    kwargs = dict(trust_remote_code=trust_remote_code)
    try:
        if Path(name).is_dir():
            return config, _local_tokenizer(name, kwargs)
        return config, AutoTokenizer.from_pretrained(name, local_files_only=True, **kwargs)
    except Exception:  # best effort, as above
        return None, None


def _warn_unknown(tokenizer, dataset, encoded: list[list[int]]) -> None:
    """Say (stderr, once per file) when prompts hold characters the tokenizer maps to its unknown
    token: a character tokenizer built for digits and operators silently reads 'é' as <unk>."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    hit = [i for i, ids in enumerate(encoded) if unk in ids]
    if hit:
        example = dataset.examples[hit[0]]
        print(f"warning: {dataset.path}: {len(hit)} prompt(s) hold characters the tokenizer does not know (first: "
              f"prompt {example.id!r}, {example.prompt[:40]!r}); they are read as {tokenizer.unk_token!r}",
              file=sys.stderr)


def check_context(config) -> None:
    """Refuse, before anything is loaded for long or written, a dataset whose longest prompt plus
    ``--max-new-tokens`` (and, with ``--sft-steps``, plus its longest answer and EOS) needs more
    positions than the model has: GPT-2 would fail mid-run on an index error, rotary models
    would run on positions they never saw. Checks what is on disk: a model still to be
    downloaded is not checked here."""
    from rg_tracer.data import load_dataset, resolve_eval_path

    model_config, tokenizer = _config_and_tokenizer(config.model, config.trust_remote_code)
    positions = positions_of(model_config) if model_config is not None else None
    if positions is None:
        return
    paths = [config.dataset, resolve_eval_path(config.dataset, config.eval_dataset)]
    for split, dataset in enumerate(load_dataset(p) for p in paths if p):
        examples = dataset.examples
        encoded = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
        _warn_unknown(tokenizer, dataset, encoded)
        prompt = [len(ids) for ids in encoded]
        i = max(range(len(examples)), key=prompt.__getitem__)
        where = f"{dataset.path}: prompt {examples[i].id!r} is {prompt[i]} tokens"
        if prompt[i] + config.max_new_tokens > positions:
            fix = (f"lower --max-new-tokens to {positions - prompt[i]} or shorten the prompt" if prompt[i] < positions
                   else f"drop the prompts longer than {positions - 1} tokens")
            raise UserError(f"{where}; with --max-new-tokens {config.max_new_tokens} a sequence needs "
                            f"{prompt[i] + config.max_new_tokens} positions, but {config.model} has {positions} "
                            f"(max_position_embeddings): {fix}, or use a model with more positions")
        if split == 0 and getattr(config, "sft_steps", 0):  # the warm-up feeds prompt + answer + EOS
            answer = max(len(ids) for ids in tokenizer([e.answer for e in examples], add_special_tokens=False)["input_ids"])
            if prompt[i] + answer + 1 > positions:
                raise UserError(f"{where} and the longest answer {answer}; --sft-steps feeds prompt + answer + EOS, "
                                f"{prompt[i] + answer + 1} positions, but {config.model} has {positions} "
                                "(max_position_embeddings): shorten them or use a model with more positions")


def _refuse_pickled_weights(directory: Path) -> None:
    """Weights are read from safetensors only: a ``.bin``/``.pt`` file is a pickle, which can run
    code when it is loaded, so a directory without safetensors weights is refused, unread."""
    if any(directory.glob("*.safetensors")) or any(directory.glob("*.safetensors.index.json")):
        return
    pickled = sorted((p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")),
                     key=lambda name: (not name.startswith("pytorch_model"), name))
    if pickled:
        raise UserError(
            f"{directory} holds {pickled[0]} but no model.safetensors; rg-tracer reads weights only from "
            "safetensors (a .bin is a pickle, which can run code when loaded). If you trust the file, convert it: "
            f"python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{directory}').save_pretrained('{directory}')\"")


def _load_from_hub(name: str, kwargs: dict, weights: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # a model already in the local cache loads without the network
        return (
            AutoTokenizer.from_pretrained(name, local_files_only=True, **kwargs),
            AutoModelForCausalLM.from_pretrained(name, local_files_only=True, use_safetensors=True, **weights, **kwargs),
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
        AutoModelForCausalLM.from_pretrained(name, use_safetensors=True, **weights, **kwargs),
    )
