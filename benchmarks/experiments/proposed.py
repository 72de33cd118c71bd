"""Proposed trainer changes, applied to a live trainer for measurement only.

    .venv/bin/python benchmarks/train_throughput.py --sides rg-tracer,patched,trl \\
        --patch benchmarks/experiments/proposed.py

Nothing here is imported by the package. ``lean_sample`` and ``fused_adamw`` have since
landed in the package (``rg_tracer/runtime/decode.py``, fused AdamW in the trainer); they stay
here only to reproduce the earlier measurements in ``benchmarks/RESULTS.md``. ``RGT_PATCHES`` (comma list) picks the changes;
default ``lean_sample,fused_adamw``:

``lean_sample``
    ``HFPolicyAdapter.sample`` calls ``model.generate``. This routes that call through
    :func:`lean_generate`, a plain KV-cached decode loop: prefill with ``logits_to_keep=1``,
    then one forward per token, ``softmax(logits / T)`` -> ``torch.multinomial`` (the same
    draws, in the same order, as ``generate(do_sample=True, top_k=0, top_p=1.0)``, so the
    tokens are identical for the same seed; ``argmax`` when greedy), padding after EOS and a
    stop once every row has emitted EOS. What it drops: the logits-processor and
    stopping-criteria machinery, generation-config merging and validation on every call,
    and the per-step 4-D mask construction (for a single query token the mask is just the
    keys' padding mask: a view of one preallocated tensor). It runs under
    ``torch.inference_mode()`` and builds its result outside it (the training forward must
    be able to save the ids). Anything it does not cover (top-k/top-p, extra kwargs) falls
    back to ``generate``.
``prealloc_cache`` (with ``lean_sample``)
    The loop's KV cache preallocates ``prompt + max_new_tokens`` positions per layer and
    returns views, instead of ``DynamicCache``'s ``torch.cat`` of the whole cache at every
    step (quadratic copying that shows on the 4M model). Built on transformers 5's
    ``Cache``/``DynamicLayer`` internals: version-sensitive, hence separate.
``fused_adamw``
    ``torch.optim.AdamW(..., fused=True)`` (TRL's default) instead of the default for-loop
    implementation on CPU.
``skip_inf_clip``
    Upstream ``DAPOTrainer.train_step`` calls ``clip_grad_norm_(params, inf)`` after our
    ``ClippingOptimizer`` already clipped: a second full gradient-norm pass for nothing.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import types

import torch


def prealloc_cache(model, capacity: int):
    """A KV cache whose layers write into preallocated buffers and return views."""
    from transformers.cache_utils import Cache, DynamicLayer

    class PreallocLayer(DynamicLayer):
        def lazy_initialization(self, k, v):
            self.device = k.device
            b, h, _, d = k.shape
            self.kbuf = k.new_empty(b, h, capacity, d)
            self.vbuf = v.new_empty(b, h, capacity, d)
            self.length = 0
            self.is_initialized = True

        def update(self, k, v, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(k, v)
            n = k.shape[-2]
            self.kbuf[:, :, self.length:self.length + n] = k
            self.vbuf[:, :, self.length:self.length + n] = v
            self.length += n
            self.keys, self.values = self.kbuf[:, :, :self.length], self.vbuf[:, :, :self.length]
            return self.keys, self.values

        def get_seq_length(self):
            return self.length if self.is_initialized else 0

    return Cache(layers=[PreallocLayer() for _ in range(model.config.num_hidden_layers)])


def lean_generate(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                  temperature=1.0, greedy=False, min_new_tokens=0, preallocate=False):
    from transformers import DynamicCache

    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.x renamed it
    if preallocate:
        cache = prealloc_cache(model, input_ids.shape[1] + max_new_tokens)
    else:
        try:
            cache = DynamicCache(config=model.config)
        except TypeError:  # older transformers
            cache = DynamicCache()
    with torch.inference_mode():
        b, p = input_ids.shape
        dev = input_ids.device
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        padded = not bool(attention_mask.all())
        out = model(input_ids=input_ids, attention_mask=attention_mask if padded else None,
                    position_ids=position_ids, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        keys = torch.cat([attention_mask.bool(), torch.ones(b, max_new_tokens, dtype=torch.bool, device=dev)], 1)
        tokens = input_ids.new_full((b, max_new_tokens), pad_token_id)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        pos = position_ids[:, -1:]
        n = 0
        for t in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            if t < min_new_tokens:
                logits[:, eos_token_id] = float("-inf")
            if greedy:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1).squeeze(1)
            nxt = nxt.masked_fill(done, pad_token_id)
            tokens[:, t] = nxt
            n = t + 1
            done |= nxt == eos_token_id
            if n == max_new_tokens or bool(done.all()):
                break
            pos = pos + 1
            mask = keys[:, None, None, : p + n] if padded else None  # one query: it sees every real key
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                        **{cache_kw: cache})
    return torch.cat([input_ids, tokens[:, :n]], 1)  # outside inference mode: a normal tensor


def install_lean_sample(policy, preallocate: bool = False) -> None:
    model = policy.model
    hf_generate = model.generate
    cfg = model.generation_config

    def generate(input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, do_sample=True,
                 temperature=1.0, top_k=0, top_p=1.0, **kw):
        if kw or (do_sample and (top_k or top_p < 1.0)):
            return hf_generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                               pad_token_id=pad_token_id, eos_token_id=eos_token_id, do_sample=do_sample,
                               temperature=temperature, top_k=top_k, top_p=top_p, **kw)
        return lean_generate(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                             temperature=temperature, greedy=not do_sample,
                             min_new_tokens=getattr(cfg, "min_new_tokens", None) or 0, preallocate=preallocate)

    model.generate = generate


def patch(trainer) -> None:
    chosen = set(filter(None, os.environ.get("RGT_PATCHES", "lean_sample,fused_adamw").split(",")))
    if "lean_sample" in chosen:
        install_lean_sample(trainer.policy, preallocate="prealloc_cache" in chosen)
    if "fused_adamw" in chosen:
        group = trainer.optimizer.optimizer.param_groups[0]
        trainer.optimizer.optimizer = torch.optim.AdamW(trainer.run.model.parameters(), lr=group["lr"],
                                                        weight_decay=group["weight_decay"], fused=True)
    if "skip_inf_clip" in chosen:
        from gepa_dapo_grn import dapo_core

        real = torch.nn.utils.clip_grad_norm_

        def clip(params, max_norm, *args, **kwargs):
            return torch.tensor(math.nan) if math.isinf(max_norm) else real(params, max_norm, *args, **kwargs)

        nn = types.SimpleNamespace(**{k: getattr(torch.nn, k) for k in dir(torch.nn) if not k.startswith("__")})
        nn.utils = types.SimpleNamespace(clip_grad_norm_=clip)
        dapo_core.nn = nn  # dapo_core uses `nn` only for this call at run time
    print(f"patched: {sorted(chosen)}", file=sys.stderr)
