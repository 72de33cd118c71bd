"""Training forwards over rows of similar length: less padding, the same log-probs.

Why: with EOS allowed, a step's completions end at many lengths, and one forward over the
batch pads every row to the longest prompt plus the longest completion. On a CPU the
forward and backward cost grows with every padded position (measured with
``benchmarks/cli_vs_trl.py``, 4.2M-parameter Qwen2, 64 new tokens, completions averaging 44:
train 285 -> 247 ms a step). So the rows are sorted by completion length and cut into
contiguous groups, each forwarded trimmed to its own widest prompt and completion; a row's
log-prob does not depend on the padding around it (explicit positions and attention masks),
so the results agree with one forward to float rounding.

Where to cut: each group costs its rows times its width in positions, plus a fixed cost per
forward (the kernel launches and Python of a forward and backward, a few milliseconds a layer
on a CPU), expressed in positions: ``OVERHEAD_FLOPS * layers / parameters`` (a forward and
backward do about 6 x parameters FLOPs a position). The cuts minimising the total are found by
dynamic programming over the distinct completion lengths (at most ``max_new_tokens`` of them).
CPU only: on a GPU, a forward's fixed cost is launches, not arithmetic, and padding is cheap.
"""

from __future__ import annotations

import torch

__all__ = ["length_groups", "overhead_positions"]

#: a CPU forward+backward's fixed cost in FLOPs per layer (~1.5 ms at ~120 GFLOP/s, divided by
#: 6 FLOPs per parameter and position): what one more forward must save in padding to pay off
OVERHEAD_FLOPS = 3e7


def overhead_positions(model) -> float:
    """A forward's fixed cost of ``model`` expressed in positions (see the module docstring)."""
    layers = getattr(model.config, "num_hidden_layers", None) or 1
    return OVERHEAD_FLOPS * layers / max(sum(p.numel() for p in model.parameters()), 1)


def length_groups(completion_lengths: torch.Tensor, overhead: float) -> list[torch.Tensor]:
    """Row indices of each group, rows sorted by completion length; one group (all rows, in
    their order) when cutting saves nothing. ``completion_lengths``: (N,) tokens per row."""
    lengths = completion_lengths.tolist()
    n = len(lengths)
    order = sorted(range(n), key=lengths.__getitem__)
    widths = sorted(set(lengths))
    if len(widths) < 2:
        return [torch.arange(n)]
    counts = [0] * len(widths)
    at = {w: k for k, w in enumerate(widths)}
    for length in lengths:
        counts[at[length]] += 1
    # best[j]: the least cost of the rows of the j shortest distinct lengths; cut[j]: where its last group starts
    best, cut = [0.0] + [float("inf")] * len(widths), [0] * (len(widths) + 1)
    for j in range(1, len(widths) + 1):
        rows = 0
        for i in range(j - 1, -1, -1):
            rows += counts[i]
            cost = best[i] + rows * widths[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    if cut[len(widths)] == 0:  # one group: the batch as it is
        return [torch.arange(n)]
    bounds, j = [], len(widths)
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    groups, start = [], 0
    for i, j in reversed(bounds):
        size = sum(counts[i:j])
        groups.append(torch.tensor(order[start:start + size]))
        start += size
    return groups
