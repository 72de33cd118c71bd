#!/usr/bin/env python
"""Generation alone: ``model.generate`` vs lean sampling loops, interleaved in one process.

    .venv/bin/python benchmarks/experiments/sampler_ab.py [--setting small|large|both] [--reps 12]

Variants: ``generate``; the prototypes in ``proposed.py`` (``lean``, ``lean+prealloc``);
and ``rg-tracer``, the package's sampler as it is (``rg_tracer.runtime.decode.cached_decode``,
which runs Llama/Qwen2 through ``LlamaStep``). Same model, the same 16 rows (2 prompts of different lengths x 8, so left padding is
exercised), EOS suppressed, one thread. Checks first that each variant draws exactly the
tokens ``generate`` draws for the same seed, then times the variants round-robin and
prints per-call CPU time (min and median): the within-process comparison is immune to the
run-to-run drift that whole-trainer runs suffer on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import _perf_common as pc  # noqa: E402
import proposed  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", choices=["small", "large", "both"], default="both")
    p.add_argument("--reps", type=int, default=12)
    a = p.parse_args(argv)
    pc.set_threads()
    import torch

    from rg_tracer.runtime.decode import cached_decode
    from rg_tracer.models import load_model

    names = ["small", "large"] if a.setting == "both" else [a.setting]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            setting = pc.SETTINGS[name]
            n = setting.max_new_tokens
            pc.build_model(Path(tmp) / name, setting)
            model, tok = load_model(str(Path(tmp) / name))
            model.eval()
            enc = tok(["12+3=", "4+5="], return_tensors="pt", padding=True, add_special_tokens=False)
            ids = enc["input_ids"].repeat_interleave(setting.group_size, 0)
            mask = enc["attention_mask"].repeat_interleave(setting.group_size, 0)

            def hf():
                with torch.no_grad():
                    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                          do_sample=True, temperature=1.0, top_k=0, top_p=1.0)

            def lean(pre):
                return lambda: proposed.lean_generate(model, ids, mask, n, tok.eos_token_id, tok.pad_token_id,
                                                      1.0, False, n, preallocate=pre)

            def ours():
                return torch.cat([ids, cached_decode(model, ids, mask, n, tok.eos_token_id, tok.pad_token_id)], 1)

            model.generation_config.min_new_tokens = n  # EOS suppressed, as in generate's call above
            variants = {"generate": hf, "lean": lean(False), "lean+prealloc": lean(True), "rg-tracer": ours}
            torch.manual_seed(0)
            ref = hf()
            for k, f in variants.items():
                torch.manual_seed(0)
                out = f()
                same = out.shape == ref.shape and bool((out == ref).all())
                print(f"[{name}] {k}: identical tokens to generate: {same}")
            times = {k: [] for k in variants}
            for _ in range(a.reps):
                for k, f in variants.items():
                    c0 = time.thread_time()
                    f()
                    times[k].append(time.thread_time() - c0)
            base = statistics.median(times["generate"])
            for k, v in times.items():
                med = statistics.median(v)
                print(f"[{name}] {k:<14} CPU per call: min {min(v) * 1000:7.1f} ms, median {med * 1000:7.1f} ms"
                      f"  ({base / med:.2f}x generate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
