"""What a step cost in memory and throughput, for the ``timing`` object of its record.

* ``tokens_per_s``: completion tokens generated this step (EOS included, padding not) over
  the seconds spent sampling and scoring them.
* ``peak_memory_mib`` (CUDA): ``torch.cuda.max_memory_allocated`` since the previous step,
  the tensors torch holds (not the caching allocator's reserve), reset after each reading.
* ``peak_rss_mib`` (CPU): the process's peak resident set so far (``ru_maxrss``). The kernel
  keeps only the lifetime peak, so it never falls: a step's own peak is not observable here.
"""

from __future__ import annotations

import resource
import sys

import torch

__all__ = ["step_resources"]


def step_resources(device: torch.device, tokens: int, seconds: float) -> dict:
    out = {"tokens_per_s": tokens / seconds if seconds > 0 else None}
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss_mib"] = peak / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux
    return out
