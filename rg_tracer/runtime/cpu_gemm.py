"""fp32 ``linear`` layers on an x86 CPU through oneDNN instead of the BLAS aten picks.

Why: aten runs an fp32 ``F.linear`` (and its backward's two matrix products) on a CPU as a
BLAS sgemm, which in the PyTorch wheels is Intel MKL. MKL chooses its kernels by CPU vendor,
and on AMD processors it runs its AVX2 code even where AVX-512 is there. Measured on an AMD
EPYC with AVX-512, one thread, the matrix shapes of the 4.2M-parameter benchmark Qwen2
(``benchmarks/cpu_gemm.py``): MKL did 75-97 GFLOP/s at 100-900 rows, forward and both
backward products alike, and oneDNN -- the kernel library PyTorch ships and already uses for
bf16 matrix products and for TorchInductor's CPU linears -- did 175-220 in one call and
140-180 as called here (chunks, below); with 16 rows (a decode step, packed weights) oneDNN
took 213-265 us a layer where MKL took 455-610. The model's forward and backward over a
training batch: 342 -> 230 ms. So on x86 CPUs not made by Intel
``--cpu-gemm auto`` runs a run's fp32 linear layers on oneDNN: the model's forward is
unchanged, only the kernel under ``F.linear`` differs, and the results agree with aten's to
float rounding (gradients of the 4.2M model within a relative 1.8e-6; ``tests/test_cpu_gemm.py``
holds 1e-5), as two BLAS libraries would. On
Intel CPUs, where MKL runs its AVX-512 kernels, ``auto`` keeps aten: the two were not
measured against each other there (``--cpu-gemm onednn`` and ``benchmarks/cpu_gemm.py`` tell).

How: :class:`OneDNNLinears` is a :class:`torch.overrides.TorchFunctionMode` that, while a
forward runs inside it, sends each eligible ``F.linear`` call to :class:`_Linear` (an
autograd function over ``torch.ops.mkldnn._linear_pointwise``: the forward, ``dY W`` and
``dYᵀ X``, the last two on transposed views, which oneDNN reads without a copy). Eligible: a
float32 CPU input and weight (and bias), autocast off, and a product large enough to gain
(:func:`worth_it`). Anything else runs aten's ``linear`` as before. Rows go to oneDNN in
chunks padded to a few row counts (:func:`rows_of`: oneDNN keeps a kernel and its scratch
memory per shape). The weight is used in its plain layout: packing it into oneDNN's blocked layout
would be faster per product but is a copy per optimizer step; the decode step, which reuses
its weights for every token, packs them (:mod:`rg_tracer.runtime.llama_step`).

Not covered: GPT-2's ``Conv1D`` projections (``torch.addmm``, not ``F.linear``), attention's
batched products (SDPA's own kernel in training), ARM CPUs (``auto`` keeps aten there: not
measured) and GPUs (cuBLAS). The choice is by vendor, not timed at start-up, so that a run and
its resumption always compute with the same kernels.
"""

from __future__ import annotations

import contextlib
import functools
import platform

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from rg_tracer.errors import UserError
from rg_tracer.options import RunOptions

__all__ = ["onednn_linear_works", "resolve_cpu_gemm", "OneDNNLinears", "linear_kernels", "forward_gemm", "linear",
           "weight_grad", "rows_of"]


#: Rows per oneDNN call: longer inputs are cut into chunks of this many (see :func:`rows_of`).
CHUNK = 128
#: A oneDNN call costs ~10-20 us more than aten's, so small products stay on aten. Measured
#: per call (one thread, AMD EPYC): with a plain weight and 128 rows, oneDNN won from ~1.5M
#: multiply-adds for the forward and ``dY W`` and from ~4M for ``dYᵀ X`` (192 x 64 weight: 40 vs
#: 58 us; 512 x 64: 131 vs 110 us), yet the 137k-parameter benchmark Qwen2 (hidden 64, gate/up
#: 512 x 64) trained 1-5 ms a step slower with its gate/up on oneDNN (three alternating 40-step
#: CLI runs), so the bound is set above it: 64 Ki multiply-adds per row (a 256 x 256 weight).
#: With a packed weight and 16 rows (a decode step), a hidden-64 Qwen2 layer took 89 us on
#: oneDNN and 39 on aten, hidden 128 about even, hidden 256 266 vs 528.
MIN_MACS = 2**23
#: The same bound for a weight packed once for a decode step (``rg_tracer.runtime.llama_step``).
MIN_MACS_PACKED = 2**20


def worth_it(rows: int, weight_shape, packed: bool = False) -> bool:
    """Whether a ``rows``-row product (a chunk's, at most :data:`CHUNK`) with a weight of
    ``weight_shape`` (out, in) gains from oneDNN."""
    macs = min(rows, CHUNK) * weight_shape[0] * weight_shape[1]
    return macs >= (MIN_MACS_PACKED if packed else MIN_MACS)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weightᵀ + bias`` for 2-D ``x`` on oneDNN (``weight`` (out, in), any strides, or packed
    by ``torch.ops.mkldnn._reorder_linear_weight``)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def rows_of(n: int) -> int:
    """The row count a oneDNN call computes for ``n <= CHUNK`` rows: the next power of two up to
    16 (a decode step's rows), else the next multiple of 64.

    oneDNN builds a kernel per problem shape and keeps it, with its scratch memory (up to the
    output's size, measured: 2 MiB for a 2048 x 256 weight gradient), in two caches of up to
    1,024 entries each. A training forward's row count (rows x width of a length group) differs
    almost every call, and unbounded shapes grew a 4.2M-parameter run's resident memory by
    ~16 MiB a step (568 -> 1,086 MiB over 30 steps). Padding every call to one of 7 row counts
    (zero rows, cut off again) bounds the kernels a run builds to 7 per weight shape and product;
    a weight gradient, whose scratch is the largest, uses only the two multiples of 64.
    """
    return 1 << max(n - 1, 0).bit_length() if n <= 16 else -(-n // 64) * 64


def gains(model: torch.nn.Module) -> bool:
    """Whether any of ``model``'s linear layers is large enough for oneDNN (:func:`worth_it` with
    full chunks)."""
    return any(isinstance(m, torch.nn.Linear) and worth_it(CHUNK, m.weight.shape) for m in model.modules())


def forward_gemm(gemm: str, model: torch.nn.Module) -> str:
    """The kernels ``model``'s forwards run with for ``gemm`` (resolved): ``aten`` when no layer
    :func:`gains` from oneDNN, so that a small model pays no :class:`OneDNNLinears` per op."""
    return "onednn" if gemm == "onednn" and gains(model) else "aten"


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x if x.shape[0] == rows else F.pad(x, (0, 0, 0, rows - x.shape[0]))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weightᵀ + bias`` for 2-D ``x`` on oneDNN, in chunks of :func:`rows_of` rows."""
    n = x.shape[0]
    if n <= CHUNK:
        return _pointwise(_padded(x, rows_of(n)), weight, bias)[:n]
    out = x.new_empty(n, weight.shape[0])
    for start in range(0, n, CHUNK):
        part = x[start:start + CHUNK]
        out[start:start + part.shape[0]] = _pointwise(_padded(part, rows_of(part.shape[0])), weight, bias)[:part.shape[0]]
    return out


def weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``gᵀ @ x`` (2-D, rows matching), summed over chunks of :func:`rows_of` rows (zero rows add nothing)."""
    total = None
    for start in range(0, g.shape[0], CHUNK):
        gp, xp = g[start:start + CHUNK], x[start:start + CHUNK]
        rows = max(rows_of(gp.shape[0]), 64)
        part = _pointwise(_padded(gp, rows).t(), _padded(xp, rows).t(), None)
        total = part if total is None else total.add_(part)
    return total


@functools.cache
def onednn_linear_works() -> bool:
    """Whether this torch build has oneDNN's fp32 linear (``torch.ops.mkldnn``, the ops
    TorchInductor's CPU backend emits) and it gives ``F.linear``'s answer on a small check,
    for a plain weight, a transposed view and a packed one."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        w, x, b = torch.randn(5, 4), torch.randn(3, 4), torch.randn(5)
        want = F.linear(x, w, b)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
        got = [_pointwise(x, w, b), _pointwise(x, w.t().contiguous().t(), b), _pointwise(x, packed, b)]
        return all(bool(torch.allclose(g, want, atol=1e-5, rtol=1e-5)) for g in got)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@functools.cache
def cpu_vendor() -> str:
    """The x86 vendor string (``AuthenticAMD``, ``GenuineIntel``, ...), or ``""`` when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    processor = platform.processor()  # Windows: "... AuthenticAMD"; macOS on x86: "i386" (Intel)
    for vendor in ("AuthenticAMD", "GenuineIntel", "HygonGenuine"):
        if vendor in processor:
            return vendor
    return "GenuineIntel" if platform.system() == "Darwin" else ""


def resolve_cpu_gemm(choice: str) -> str:
    """``onednn`` or ``aten`` for ``--cpu-gemm`` (``auto``: oneDNN on a non-Intel x86 CPU where
    it works)."""
    if choice not in RunOptions.CPU_GEMMS:
        raise ValueError(f"cpu_gemm {choice!r} is not one of {RunOptions.CPU_GEMMS}")
    if choice == "auto":
        x86 = platform.machine().lower() in ("x86_64", "amd64")
        return "onednn" if x86 and cpu_vendor() not in ("GenuineIntel", "") and onednn_linear_works() else "aten"
    if choice == "onednn" and not onednn_linear_works():
        raise UserError(f"--cpu-gemm onednn: torch {torch.__version__} here has no working oneDNN float32 linear "
                        "(torch.ops.mkldnn); pass --cpu-gemm auto or aten")
    return choice


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` of any leading dimensions, through :func:`linear`."""
    return linear(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


class _Linear(torch.autograd.Function):
    """``F.linear`` with its forward and backward products on oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = linear(g, weight.t()).view(x.shape)  # g @ W
        if ctx.needs_input_grad[1]:
            dw = weight_grad(g, x.reshape(-1, x.shape[-1]))  # gᵀ @ X
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


def _eligible(x, weight, bias) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
            and x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[-1] and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and worth_it(x.numel() // x.shape[-1], weight.shape))


class OneDNNLinears(TorchFunctionMode):
    """Inside it, eligible ``F.linear`` calls (see the module docstring) run on oneDNN."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0] if args else kwargs["input"], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if _eligible(x, weight, bias):
                if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
                    return _Linear.apply(x, weight, bias)
                return _forward(x, weight, bias)
        return func(*args, **kwargs)


def linear_kernels(gemm: str, device) -> contextlib.AbstractContextManager:
    """The context a forward runs in for ``gemm`` (resolved: ``onednn`` or ``aten``) on ``device``."""
    if gemm == "onednn" and torch.device(device).type == "cpu":
        return OneDNNLinears()
    return contextlib.nullcontext()
