"""A one-token decode step for Llama-family models (Llama, Qwen2) as plain tensor ops.

Why it exists: on a CPU, a small model's decode step through the Hugging Face modules is
mostly dispatch overhead, not arithmetic. Sampling 16 rows (``benchmarks/RESULTS.md``, CPU per
call): 32 tokens from the 137k-parameter benchmark Qwen2 took 48.6 ms with ``generate`` and
13.3 ms through this step; 64 tokens from the 4.2M-parameter one, 346 vs 190 ms. The
arithmetic is the model's own, with its weights, in its dtype; what differs:

1. On CPU, q/k/v and gate/up are one matmul each on weights packed once per sampling call:
   in float32 with ``--cpu-gemm`` resolving to oneDNN (:mod:`rg_tracer.runtime.cpu_gemm`),
   into oneDNN's blocked layout for the call's row count (``layout="onednn"``: a layer's four
   products with 16 rows took 260 us, against 610 us for MKL on an (in, out) copy, on an AMD
   EPYC); otherwise transposed into (in, out) copies for ``x @ w`` (``"copy"``: 1.3x faster than
   ``F.linear`` with 16 rows on an Intel Xeon). The copy costs one set of layer weights while
   sampling, so other devices use views of the weights and join the outputs (``"views"``).
2. The KV cache is preallocated for the whole completion and written in place.
3. Attention for a single query is two batched matmuls with grouped query heads (the
   fused SDPA kernel cost 1.6x that for one query on CPU); rotary tables are built once.
4. The prompt's prefill still runs through the model (``cached_decode``); its cache seeds ours.

5. On CPU, a projection wrapped by a peft LoRA adapter (``--lora``, vanilla LoRA: no DoRA or
   other variant) is packed with the adapter folded in, ``W + scaling · B A`` (and ``B``'s
   bias, if any), since the packed copy is made anyway; the sum is rounded once instead of
   added after two matmuls, a float difference of the same kind as the fused matmuls'.
   Elsewhere the weights are views, and folding would copy them: LoRA keeps the model's forward.

Supported: ``model_type`` llama or qwen2 with full (not sliding-window) attention, a
rotary embedding whose frequencies do not depend on the sequence length, and unwrapped,
hook-free modules (on CPU also vanilla LoRA linears). Anything else uses the model's own
forward (:func:`supports_llama_step`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rg_tracer.runtime import cpu_gemm
from rg_tracer.runtime.cpu_gemm import resolve_cpu_gemm

__all__ = ["LlamaStep", "supports_llama_step"]

_STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def full_attention(config) -> bool:
    """No sliding-window layers: every key stays in the cache."""
    return all(kind == "full_attention" for kind in (getattr(config, "layer_types", None) or []))


def supports_llama_step(model) -> bool:
    """Llama/Qwen2 with full attention, a static rotary table and plain modules.

    Plain: every projection is exactly ``nn.Linear`` (on CPU, or a vanilla peft LoRA layer over
    one, folded in: item 5) and no module has hooks or a forward patched onto the instance, so a
    quantisation wrapper, another adapter kind, an accelerate offload hook or a user's patch
    keeps the model's own forward instead of being silently bypassed.
    (A patch to a class's ``forward`` cannot be seen: ``--no-lean-sampler`` is for that.)
    """
    config = model.config
    if getattr(config, "model_type", None) not in ("llama", "qwen2"):
        return False
    if not full_attention(config):
        return False
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if getattr(rotary, "rope_type", None) not in _STATIC_ROPE or getattr(config, "pretraining_tp", 1) != 1:
        return False
    on_cpu = next(model.parameters()).device.type == "cpu"
    for module in model.modules():
        if (module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook")
                or "forward" in vars(module)):
            return False
    for layer in model.model.layers:
        linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                   layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]
        if any(type(linear) is not torch.nn.Linear and not (on_cpu and _vanilla_lora(linear)) for linear in linears):
            return False
    return type(model.get_output_embeddings()) is torch.nn.Linear


def _vanilla_lora(linear) -> bool:
    """A peft LoRA linear layer over a plain ``nn.Linear`` whose active adapters are vanilla
    LoRA (``base(x) + scaling · B(A(x))``), so its effective weight can be folded."""
    base = getattr(linear, "base_layer", None)
    if type(base) is not torch.nn.Linear or not hasattr(linear, "lora_A") or not hasattr(linear, "scaling"):
        return False
    variants = getattr(linear, "lora_variant", {}) or {}
    return not any(name in variants for name in getattr(linear, "active_adapters", ()))


def _effective(linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of a projection: its own, or with its active LoRA adapters folded in."""
    if type(linear) is torch.nn.Linear:
        return linear.weight, linear.bias
    weight, bias = linear.base_layer.weight, linear.base_layer.bias
    if linear.disable_adapters or linear.merged:
        return weight, bias
    for name in linear.active_adapters:
        if name not in linear.lora_A:
            continue
        a, b, scale = linear.lora_A[name], linear.lora_B[name], linear.scaling[name]
        weight = weight + scale * (b.weight.to(weight.dtype) @ a.weight.to(weight.dtype))
        if b.bias is not None:
            bias = scale * b.bias.to(weight.dtype) + (0 if bias is None else bias)
    return weight, bias


def default_layout(weight: torch.Tensor, gemm: str) -> str:
    """On a CPU ``onednn`` for float32 (no autocast) with ``gemm`` (``--cpu-gemm``, resolved)
    ``onednn``, else ``copy``; ``views`` elsewhere."""
    if weight.device.type != "cpu":
        return "views"
    float32 = weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    return "onednn" if float32 and gemm == "onednn" else "copy"


class _Projection:
    """``x -> x Wᵀ + b`` for ``(weight, bias)`` projections stacked along out (q/k/v, gate/up).

    ``layout``: ``onednn`` -- one copy in oneDNN's blocked layout for ``rows``-row inputs (item 1;
    a product too small to gain from it, :func:`~rg_tracer.runtime.cpu_gemm.worth_it`, takes
    ``copy``); ``copy`` -- one contiguous (in, out) copy for ``x @ w``; ``views`` -- the model's own
    weights, one matmul each, outputs joined.
    """

    __slots__ = ("layout", "weight", "bias")

    def __init__(self, projections: list, layout: str, rows: int) -> None:
        weights = [w for w, _ in projections]
        self.layout, self.bias = layout, _bias(*projections)
        if layout == "views":
            self.weight = tuple(w.t() for w in weights)
            return
        joined = weights[0] if len(weights) == 1 else torch.cat(weights)
        if layout == "onednn" and not cpu_gemm.worth_it(rows, joined.shape, packed=True):
            self.layout = layout = "copy"
        if layout == "onednn":
            packed_rows = cpu_gemm.rows_of(min(rows, cpu_gemm.CHUNK))
            self.weight = torch.ops.mkldnn._reorder_linear_weight(joined.contiguous(), packed_rows)
        elif layout == "copy":
            self.weight = joined.t().contiguous()
        else:
            raise ValueError(f"unknown layout {layout!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "onednn":
            return cpu_gemm.linear(x, self.weight, self.bias)
        if self.layout == "copy":
            return x @ self.weight if self.bias is None else torch.addmm(self.bias, x, self.weight)
        out = torch.cat([x @ part for part in self.weight], -1)
        return out if self.bias is None else out + self.bias


def _bias(*projections) -> torch.Tensor | None:
    """The biases of ``(weight, bias)`` projections joined like their stacked weights (zeros for
    one without, when another has one), or ``None`` when none has a bias."""
    if all(b is None for _, b in projections):
        return None
    return torch.cat([w.new_zeros(w.shape[0]) if b is None else b for w, b in projections])


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``Qwen2RMSNorm`` / ``LlamaRMSNorm``, casts included (fp32: the fused op, bit-equal)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class LlamaStep:
    """Callable ``tokens (B,) -> logits (B, V)`` for the next position; one call per new token.

    Built after the prefill from the model and its filled ``DynamicCache``, which it copies
    into its own. ``key_mask`` (B, P) marks the real prompt tokens (left padding); the
    position of each row's next token follows from it, so rotary tables are built once.
    ``layout`` of the projections' weights (:class:`_Projection`): by default
    :func:`default_layout` for ``--cpu-gemm auto``.
    """

    def __init__(self, model, cache, key_mask: torch.Tensor, max_new_tokens: int,
                 layout: str | None = None) -> None:
        config, core = model.config, model.model
        first = core.layers[0].self_attn
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = first.head_dim, first.scaling
        self.embed = core.embed_tokens.weight
        b, p = key_mask.shape
        layout = layout or default_layout(self.embed, resolve_cpu_gemm("auto"))
        self.rows, self.filled = b, p
        self.layers, self.keys, self.values = [], [], []
        for i, layer in enumerate(core.layers):
            attn, mlp = layer.self_attn, layer.mlp
            qw, kw, vw, ow = (_effective(lin) for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
            gw, uw, dw = (_effective(lin) for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                _Projection([qw, kw, vw], layout, b), _Projection([ow], layout, b),
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                _Projection([gw, uw], layout, b), _Projection([dw], layout, b),
                F.silu if config.hidden_act == "silu" else mlp.act_fn,
            ))
            k, v = cache.layers[i].keys, cache.layers[i].values  # (B, kv_heads, P, head_dim)
            keys = k.new_empty(b, self.kv_heads, p + max_new_tokens, self.head_dim)
            values = v.new_empty(keys.shape)
            keys[:, :, :p], values[:, :, :p] = k, v
            self.keys.append(keys)
            self.values.append(values)
        self.norm, self.norm_eps = core.norm.weight, core.norm.variance_epsilon
        head = model.get_output_embeddings()
        self.lm_head = _Projection([(head.weight, head.bias)], layout, b)
        self._rotary_tables(core.rotary_emb, key_mask, max_new_tokens)
        keys_seen = torch.cat([key_mask.bool(), key_mask.new_ones(b, max_new_tokens, dtype=torch.bool)], 1)
        bias = torch.zeros(keys_seen.shape, dtype=self.embed.dtype, device=keys_seen.device)
        bias.masked_fill_(~keys_seen, float("-inf"))  # (B, P + n): -inf on padding keys
        self.key_bias = bias.repeat_interleave(self.kv_heads, 0)[:, None]  # (B * kv_heads, 1, P + n)

    def _rotary_tables(self, rotary, key_mask: torch.Tensor, steps: int) -> None:
        """cos and sign-folded sin for every step, (n, B, 1, head_dim), as the model computes them."""
        first = key_mask.sum(-1)  # position of each row's first new token
        positions = first[None, :] + torch.arange(steps, device=key_mask.device)[:, None]  # (n, B)
        freqs = positions[..., None].float() * rotary.inv_freq.float()
        angles = torch.cat([freqs, freqs], -1)
        half = self.head_dim // 2
        sign = torch.ones(self.head_dim, dtype=self.embed.dtype, device=angles.device)
        sign[:half] = -1.0  # rotate_half(x) * sin == roll(x, half) * (sign * sin)
        self.cos = (angles.cos() * rotary.attention_scaling).to(self.embed.dtype)[:, :, None]
        self.sin = ((angles.sin() * rotary.attention_scaling).to(self.embed.dtype) * sign)[:, :, None]
        self.step = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the rows held now) for the next calls: their caches,
        key masks and rotary tables (finished rows need no further tokens)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        width = self.key_bias.shape[-1]
        self.key_bias = (self.key_bias.view(self.rows, self.kv_heads, 1, width).index_select(0, rows)
                         .reshape(len(rows) * self.kv_heads, 1, width))
        self.cos, self.sin = self.cos.index_select(1, rows), self.sin.index_select(1, rows)
        self.rows = len(rows)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        b, dt, heads, kv_heads, head_dim = self.rows, self.embed.dtype, self.heads, self.kv_heads, self.head_dim
        n_q, n_kv = heads * head_dim, kv_heads * head_dim
        c, cos, sin = self.filled, self.cos[self.step], self.sin[self.step]  # cache slot; (B, 1, head_dim)
        self.filled, self.step = c + 1, self.step + 1
        bias = self.key_bias[..., :c + 1]
        x = F.embedding(tokens, self.embed)  # (B, H)
        for i, (ln1, eps1, qkv_proj, o_proj, ln2, eps2, gate_up_proj, down_proj, act) in enumerate(self.layers):
            qkv = qkv_proj(_rms_norm(x, ln1, eps1))  # (B, n_q + 2 n_kv)
            qk = qkv[:, :n_q + n_kv].view(b, heads + kv_heads, head_dim)
            qk = qk * cos + torch.roll(qk, head_dim // 2, -1) * sin
            keys, values = self.keys[i], self.values[i]  # (B, kv_heads, P + n, head_dim)
            keys[:, :, c] = qk[:, heads:]
            values[:, :, c] = qkv[:, n_q + n_kv:].view(b, kv_heads, head_dim)
            q = qk[:, :heads].reshape(b * kv_heads, heads // kv_heads, head_dim)
            seen_k = keys.view(b * kv_heads, -1, head_dim)[:, :c + 1]
            seen_v = values.view(b * kv_heads, -1, head_dim)[:, :c + 1]
            scores = torch.baddbmm(bias, q, seen_k.transpose(1, 2), alpha=self.scaling)  # (B kv, group, c+1)
            probs = torch.softmax(scores, -1) if dt == torch.float32 else torch.softmax(scores.float(), -1).to(dt)
            x = x + o_proj(torch.bmm(probs, seen_v).view(b, n_q))
            gate_up = gate_up_proj(_rms_norm(x, ln2, eps2))
            half = gate_up.shape[-1] // 2
            x = x + down_proj(act(gate_up[:, :half]) * gate_up[:, half:])
        return self.lm_head(_rms_norm(x, self.norm, self.norm_eps))
