"""A lean KV-cached sampling loop for the model families rg-tracer tests.

``model.generate`` spends much of a tiny model's step outside the model: generation-config
merging and validation, logits processors, stopping criteria and a fresh 4-D attention mask
on every token. This loop does prefill (``logits_to_keep=1``), then one forward per token,
``softmax(logits / T)`` -> ``torch.multinomial`` (the same draws in the same order as
``generate(do_sample=True, top_k=0, top_p=1.0)``, so the tokens are identical for a given
seed; ``argmax`` when greedy), pads after EOS and stops once every row has finished. Where
the decode step can (``LlamaStep.select_rows``), rows that have finished are dropped from it
once they are a quarter of those it holds: ``generate`` keeps computing every row to the
longest completion, which with EOS allowed is most of a sampling call's work on a CPU. The
random numbers are still drawn for the whole batch (:func:`_multinomial_rows`), so the
tokens stay ``generate``'s.
Llama and Qwen2 models take each token through :class:`~rg_tracer.runtime.llama_step.LlamaStep`
(the same arithmetic without the modules' overhead); GPT-2 through the model's forward.
Measured against ``generate`` on the benchmark models: ``benchmarks/RESULTS.md``. Other
model families, sliding-window attention and transformers before 5 keep ``generate``.
"""

from __future__ import annotations

import inspect

import torch
import transformers

from rg_tracer.runtime.cpu_gemm import forward_gemm, linear_kernels, resolve_cpu_gemm
from rg_tracer.runtime.llama_step import LlamaStep, default_layout, full_attention, supports_llama_step

__all__ = ["supports_cached_decode", "cached_decode"]

_FAMILIES = ("gpt2", "llama", "qwen2")
#: Drop finished rows from the decode step once the unfinished ones are at most this share of
#: the rows it holds (each drop copies the KV cache, so not at every EOS).
COMPACT_BELOW = 0.75


def supports_cached_decode(model) -> bool:
    """Our families on transformers >= 5, full attention only: a sliding-window cache keeps
    fewer keys than this loop's per-token padding mask covers."""
    params = inspect.signature(model.forward).parameters
    return (getattr(model.config, "model_type", None) in _FAMILIES and "logits_to_keep" in params
            and full_attention(model.config) and int(transformers.__version__.split(".")[0]) >= 5)


def cached_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  eos_token_id: int, pad_token_id: int, temperature: float = 1.0,
                  greedy: bool = False, token_logprobs: list | None = None, gemm: str = "auto") -> torch.Tensor:
    """Completion tokens, (N, n) with n <= ``max_new_tokens``; ``pad_token_id`` after EOS.
    ``token_logprobs``, when given a list, receives each position's (N,) log-probability of the
    drawn token under the distribution it was drawn from (what a sampler-side importance ratio
    or a check against the training forward needs). ``gemm``: ``--cpu-gemm``, for the decode
    step's weight layout (:func:`~rg_tracer.runtime.llama_step.default_layout`) and the model's
    own forwards (prefill, and every step of models without the plain-ops step)."""
    from transformers import DynamicCache

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    b = input_ids.shape[0]
    gemm = resolve_cpu_gemm(gemm)
    with torch.inference_mode():
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        padded = not bool(attention_mask.all())
        with linear_kernels(forward_gemm(gemm, model), input_ids.device):
            out = model(input_ids=input_ids, attention_mask=attention_mask if padded else None,
                        position_ids=position_ids, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        logits = out.logits[:, -1]
        if supports_llama_step(model):
            layout = default_layout(model.model.embed_tokens.weight, gemm)
            advance = LlamaStep(model, cache, attention_mask, max_new_tokens, layout)
        else:
            advance = _ModelStep(model, cache, cache_kw, attention_mask, position_ids, max_new_tokens,
                                 forward_gemm(gemm, model))
        tokens = input_ids.new_full((b, max_new_tokens), pad_token_id)
        held = torch.arange(b, device=input_ids.device)  # the batch rows the decode step holds
        live = torch.ones(b, dtype=torch.bool, device=input_ids.device)  # over held rows: no EOS yet
        compacts = hasattr(advance, "select_rows")
        min_new = getattr(model.generation_config, "min_new_tokens", None) or 0  # honoured as generate does
        n = 0
        for t in range(max_new_tokens):
            logits = logits.float()
            if t < min_new:
                logits[:, eos_token_id] = float("-inf")
            scaled = logits if greedy or temperature == 1.0 else logits / temperature  # x / 1.0 == x exactly
            if greedy:
                nxt = logits.argmax(-1)
            elif len(held) == b:
                nxt = torch.multinomial(torch.softmax(scaled, -1), 1).squeeze(1)
            else:
                nxt = _multinomial_rows(torch.softmax(scaled, -1), held, b)
            if token_logprobs is not None:
                drawn = torch.log_softmax(scaled, -1).gather(1, nxt[:, None]).squeeze(1)
                token_logprobs.append(drawn if len(held) == b else drawn.new_zeros(b).index_copy_(0, held, drawn))
            nxt = nxt.masked_fill(~live, pad_token_id)
            if len(held) == b:
                tokens[:, t] = nxt
            else:
                tokens[held, t] = nxt
            n = t + 1
            live &= nxt != eos_token_id
            going = int(live.sum())
            if n == max_new_tokens or going == 0:
                break
            if compacts and going <= COMPACT_BELOW * len(held):  # drop the finished rows
                keep = live.nonzero().squeeze(1)
                advance.select_rows(keep)
                held, live, nxt = held[keep], live[keep], nxt[keep]
            logits = advance(nxt)
    return tokens[:, :n].clone()  # a normal tensor: the training forward saves these ids


def _multinomial_rows(probs: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """``torch.multinomial(p, 1)`` for ``rows`` of a ``batch``-row draw, with the same random
    numbers: multinomial samples one draw as ``argmax(p / q)``, ``q ~ Exp(1)`` of the batch's
    shape (Gumbel-max), so drawing ``q`` for every row and using ``rows`` of it gives the tokens
    an unpruned loop would (and ``generate`` does). Its check of ``p`` is repeated, same words."""
    if not bool(torch.isfinite(probs).all()):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    q = probs.new_empty(batch, probs.shape[-1]).exponential_(1)
    return (probs / q.index_select(0, rows)).argmax(-1)


class _ModelStep:
    """``tokens (B,) -> logits (B, V)`` through the model's own forward and its cache."""

    def __init__(self, model, cache, cache_kw: str, key_mask: torch.Tensor, position_ids: torch.Tensor,
                 max_new_tokens: int, gemm: str = "aten") -> None:
        self.model, self.cache_kw, self.cache, self.gemm = model, cache_kw, cache, gemm
        b, self.filled = key_mask.shape
        self.position = position_ids[:, -1:]
        self.keys = None  # (B, P + n) real keys; only needed with left padding
        if not bool(key_mask.all()):
            self.keys = torch.cat([key_mask.bool(), key_mask.new_ones(b, max_new_tokens, dtype=torch.bool)], 1)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.position = self.position + 1
        self.filled += 1
        mask = None if self.keys is None else self.keys[:, None, None, :self.filled]  # one query sees every real key
        with linear_kernels(self.gemm, tokens.device):
            return self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=self.position,
                              use_cache=True, **{self.cache_kw: self.cache}).logits[:, -1]
