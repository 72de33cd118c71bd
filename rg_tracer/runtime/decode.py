"""A lean KV-cached sampling loop for the model families rg-tracer tests.

``model.generate`` spends much of a tiny model's step outside the model: generation-config
merging and validation, logits processors, stopping criteria and a fresh 4-D attention mask
on every token. This loop does prefill (``logits_to_keep=1``), then one forward per token,
``softmax(logits / T)`` -> ``torch.multinomial`` (the same draws in the same order as
``generate(do_sample=True, top_k=0, top_p=1.0)``, so the tokens are identical for a given
seed; ``argmax`` when greedy), pads after EOS and stops once every row has finished.
Llama and Qwen2 models take each token through :class:`~rg_tracer.runtime.llama_step.LlamaStep`
(the same arithmetic without the modules' overhead); GPT-2 through the model's forward.
Measured against ``generate`` on the benchmark models: ``benchmarks/RESULTS.md``. Other
model families, sliding-window attention and transformers before 5 keep ``generate``.
"""

from __future__ import annotations

import inspect

import torch
import transformers

from rg_tracer.runtime.llama_step import LlamaStep, full_attention, supports_llama_step

__all__ = ["supports_cached_decode", "cached_decode"]

_FAMILIES = ("gpt2", "llama", "qwen2")


def supports_cached_decode(model) -> bool:
    """Our families on transformers >= 5, full attention only: a sliding-window cache keeps
    fewer keys than this loop's per-token padding mask covers."""
    params = inspect.signature(model.forward).parameters
    return (getattr(model.config, "model_type", None) in _FAMILIES and "logits_to_keep" in params
            and full_attention(model.config) and int(transformers.__version__.split(".")[0]) >= 5)


def cached_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  eos_token_id: int, pad_token_id: int, temperature: float = 1.0,
                  greedy: bool = False, token_logprobs: list | None = None) -> torch.Tensor:
    """Completion tokens, (N, n) with n <= ``max_new_tokens``; ``pad_token_id`` after EOS.
    ``token_logprobs``, when given a list, receives each position's (N,) log-probability of the
    drawn token under the distribution it was drawn from (what a sampler-side importance ratio
    or a check against the training forward needs)."""
    from transformers import DynamicCache

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    b = input_ids.shape[0]
    with torch.inference_mode():
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        padded = not bool(attention_mask.all())
        out = model(input_ids=input_ids, attention_mask=attention_mask if padded else None,
                    position_ids=position_ids, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        logits = out.logits[:, -1]
        if supports_llama_step(model):
            advance = LlamaStep(model, cache, attention_mask, max_new_tokens)
        else:
            advance = _ModelStep(model, cache, cache_kw, attention_mask, position_ids, max_new_tokens)
        tokens = input_ids.new_full((b, max_new_tokens), pad_token_id)
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        min_new = getattr(model.generation_config, "min_new_tokens", None) or 0  # honoured as generate does
        n = 0
        for t in range(max_new_tokens):
            logits = logits.float()
            if t < min_new:
                logits[:, eos_token_id] = float("-inf")
            scaled = logits if greedy or temperature == 1.0 else logits / temperature  # x / 1.0 == x exactly
            if greedy:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(scaled, -1), 1).squeeze(1)
            if token_logprobs is not None:
                token_logprobs.append(torch.log_softmax(scaled, -1).gather(1, nxt[:, None]).squeeze(1))
            nxt = nxt.masked_fill(done, pad_token_id)
            tokens[:, t] = nxt
            n = t + 1
            done |= nxt == eos_token_id
            if n == max_new_tokens or bool(done.all()):
                break
            logits = advance(nxt)
    return tokens[:, :n].clone()  # a normal tensor: the training forward saves these ids


class _ModelStep:
    """``tokens (B,) -> logits (B, V)`` through the model's own forward and its cache."""

    def __init__(self, model, cache, cache_kw: str, key_mask: torch.Tensor, position_ids: torch.Tensor,
                 max_new_tokens: int) -> None:
        self.model, self.cache_kw, self.cache = model, cache_kw, cache
        b, self.filled = key_mask.shape
        self.position = position_ids[:, -1:]
        self.keys = None  # (B, P + n) real keys; only needed with left padding
        if not bool(key_mask.all()):
            self.keys = torch.cat([key_mask.bool(), key_mask.new_ones(b, max_new_tokens, dtype=torch.bool)], 1)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.position = self.position + 1
        self.filled += 1
        mask = None if self.keys is None else self.keys[:, None, None, :self.filled]  # one query sees every real key
        return self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=self.position,
                          use_cache=True, **{self.cache_kw: self.cache}).logits[:, -1]
