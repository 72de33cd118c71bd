#!/usr/bin/env python
"""float32 linear layers on this CPU: aten's kernel (MKL in the PyPI wheels) against oneDNN.

    .venv/bin/python benchmarks/cpu_gemm.py [--rows 16,100,300,900] [--json out.json]

What ``--cpu-gemm`` chooses between (``rg_tracer/runtime/cpu_gemm.py``), on the four weight
shapes of a layer of the 4.2M-parameter benchmark Qwen2 (``_perf_common.SETTINGS["large"]``:
q/k/v 768x256, o 256x256, gate/up 2048x256, down 256x1024), one thread, in one process:

* per row count, GFLOP/s of the training products -- the forward ``X Wᵀ``, the backward's
  ``dY W`` and ``dYᵀ X`` -- through aten (``F.linear``, ``@``) and through oneDNN as
  ``rg_tracer.runtime.cpu_gemm`` calls it (plain weight layout, transposed views, rows in
  chunks of ``CHUNK`` padded to ``rows_of``), and oneDNN unchunked;
* the decode step's products (16 rows by default) through aten on an (in, out) copy, the
  ``copy`` layout, and through oneDNN on weights packed for that row count (``onednn``);
* the benchmark model's forward + backward over 16 x 68 positions (a training step's batch at
  its widest) under each kernel, and the largest relative difference of their gradients;
* resident memory added by 200 forward and weight-gradient products at 200 different row
  counts (as length groups produce), through ``cpu_gemm`` and through unchunked oneDNN calls,
  whose per-shape kernels oneDNN keeps with their scratch memory.

Each figure is the median of ``--repeats`` timings (each product's arms one after another; the
model's two sides alternate). The ratios,
oneDNN over aten, are what to compare across machines: ``docs/performance.md`` lists them.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf_common as pc  # noqa: E402

SHAPES = [(768, 256), (256, 256), (2048, 256), (256, 1024)]  # (out, in) of q/k/v, o, gate/up, down


def timed(fn, repeats: int, inner: int) -> float:
    """Median CPU seconds of one ``fn()`` over ``repeats`` batches of ``inner`` calls."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(inner):
            fn()
        times.append((time.process_time() - t0) / inner)
    return pc.median(times)


def products(rows: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from rg_tracer.runtime.cpu_gemm import linear, weight_grad

    lp = torch.ops.mkldnn._linear_pointwise
    ws = [torch.randn(o, i) for o, i in SHAPES]
    xs = [torch.randn(rows, i) for _, i in SHAPES]
    gs = [torch.randn(rows, o) for o, _ in SHAPES]
    flops = sum(2 * rows * o * i for o, i in SHAPES)
    inner = max(1, 2000 // rows)
    arms = {
        "forward": (lambda: [F.linear(x, w) for x, w in zip(xs, ws)],
                    lambda: [linear(x, w) for x, w in zip(xs, ws)],
                    lambda: [lp(x, w, None, "none", [], "") for x, w in zip(xs, ws)]),
        "dY W": (lambda: [g @ w for g, w in zip(gs, ws)],
                 lambda: [linear(g, w.t()) for g, w in zip(gs, ws)],
                 lambda: [lp(g, w.t(), None, "none", [], "") for g, w in zip(gs, ws)]),
        "dYt X": (lambda: [g.t() @ x for g, x in zip(gs, xs)],
                  lambda: [weight_grad(g, x) for g, x in zip(gs, xs)],
                  lambda: [lp(g.t(), x.t(), None, "none", [], "") for g, x in zip(gs, xs)]),
    }
    out = {}
    for name, (aten, onednn, whole) in arms.items():
        a, o, w = timed(aten, repeats, inner), timed(onednn, repeats, inner), timed(whole, repeats, inner)
        out[name] = {"aten_gflops": flops / a / 1e9, "onednn_gflops": flops / o / 1e9,
                     "unchunked_gflops": flops / w / 1e9, "ratio": a / o}
    return out


def cache_growth(counts: int = 200) -> dict:
    """Resident MiB added by a forward and a weight gradient at ``counts`` row counts (gate/up's
    2048 x 256 weight), through ``cpu_gemm`` and through unchunked oneDNN calls."""
    import torch

    from rg_tracer.runtime.cpu_gemm import linear, weight_grad

    lp = torch.ops.mkldnn._linear_pointwise
    w = torch.randn(2048, 256)
    out = {}
    for name, fwd, wgrad in (("cpu_gemm", lambda x: linear(x, w), weight_grad),
                             ("unchunked", lambda x: lp(x, w, None, "none", [], ""),
                              lambda g, x: lp(g.t(), x.t(), None, "none", [], ""))):
        before = pc.rss_mib()
        for n in range(301, 301 + counts):
            x, g = torch.randn(n, 256), torch.randn(n, 2048)
            fwd(x), wgrad(g, x)
        out[name] = pc.rss_mib() - before
    return out


def decode(rows: int, repeats: int) -> dict:
    import torch

    ws = [torch.randn(o, i) for o, i in SHAPES]
    copies = [w.t().contiguous() for w in ws]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in ws]
    xs = [torch.randn(rows, i) for _, i in SHAPES]
    a = timed(lambda: [x @ w for x, w in zip(xs, copies)], repeats, 200)
    o = timed(lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "") for x, p in zip(xs, packed)],
              repeats, 200)
    pack = timed(lambda: [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in ws], repeats, 5)
    copy = timed(lambda: [w.t().contiguous() for w in ws], repeats, 5)
    return {"rows": rows, "aten_us": a * 1e6, "onednn_us": o * 1e6, "ratio": a / o,
            "copy_us": copy * 1e6, "pack_us": pack * 1e6}


def model_step(repeats: int) -> dict:
    import tempfile

    import torch

    from rg_tracer.models import load_model
    from rg_tracer.runtime.cpu_gemm import OneDNNLinears

    with tempfile.TemporaryDirectory() as tmp:
        pc.build_model(Path(tmp), pc.SETTINGS["large"])
        model, _ = load_model(tmp)
    torch.manual_seed(0)
    ids = torch.randint(3, 15, (16, 68))

    def step(mode):
        model.zero_grad()
        with mode:
            logits = model(input_ids=ids, use_cache=False).logits
        torch.log_softmax(logits, -1)[..., 5].mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    ga, go = step(contextlib.nullcontext()), step(OneDNNLinears())
    diff = max(float((a - o).abs().max() / a.abs().max().clamp(min=1e-12)) for a, o in zip(ga, go))
    times = {"aten": [], "onednn": []}
    for _ in range(repeats):
        for name, mode in (("aten", contextlib.nullcontext), ("onednn", OneDNNLinears)):
            t0 = time.process_time()
            step(mode())
            times[name].append(time.process_time() - t0)
    a, o = pc.median(times["aten"]), pc.median(times["onednn"])
    return {"aten_ms": a * 1e3, "onednn_ms": o * 1e3, "ratio": a / o, "max_rel_grad_diff": diff}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="16,100,300,900", help="row counts of the training products")
    p.add_argument("--decode-rows", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    pc.set_threads()
    import torch

    from rg_tracer.runtime.cpu_gemm import cpu_vendor, onednn_linear_works, resolve_cpu_gemm

    env = pc.environment()
    print(f"{env['cpu']} ({cpu_vendor() or 'vendor unknown'}), torch {env['torch']}, one thread; "
          f"--cpu-gemm auto resolves to {resolve_cpu_gemm('auto')} here")
    if not onednn_linear_works():
        print("this torch build has no working oneDNN float32 linear: nothing to compare")
        return 1
    result = {"environment": env, "mkl": torch.backends.mkl.is_available(), "products": {}}
    print(f"\n{'rows':>5} {'product':8} {'aten GF/s':>10} {'oneDNN GF/s':>12} {'oneDNN/aten':>12} {'unchunked GF/s':>15}")
    for rows in [int(r) for r in a.rows.split(",")]:
        result["products"][rows] = products(rows, a.repeats)
        for name, r in result["products"][rows].items():
            print(f"{rows:5d} {name:8} {r['aten_gflops']:10.0f} {r['onednn_gflops']:12.0f} {r['ratio']:11.2f}x "
                  f"{r['unchunked_gflops']:15.0f}")
    d = result["decode"] = decode(a.decode_rows, a.repeats)
    print(f"\ndecode step, {d['rows']} rows, one layer's four products: aten on an (in, out) copy "
          f"{d['aten_us']:.0f} us, oneDNN packed {d['onednn_us']:.0f} us: {d['ratio']:.2f}x "
          f"(making the copy {d['copy_us']:.0f} us, packing {d['pack_us']:.0f} us, once per sampling call)")
    m = result["model"] = model_step(a.repeats)
    print(f"4.2M Qwen2 forward + backward, 16 x 68 positions: aten {m['aten_ms']:.0f} ms, oneDNN "
          f"{m['onednn_ms']:.0f} ms: {m['ratio']:.2f}x; largest relative gradient difference "
          f"{m['max_rel_grad_diff']:.1e}")
    c = result["cache_growth_mib"] = cache_growth()
    print(f"resident memory added by 200 row counts (forward + weight gradient, 2048 x 256): through "
          f"cpu_gemm {c['cpu_gemm']:.0f} MiB, unchunked oneDNN calls {c['unchunked']:.0f} MiB")
    if a.json:
        pc.write_json(a.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
