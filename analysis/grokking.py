"""Grokking diagnostics from eval curves: when a run memorised, when it generalised.

Pure functions over the ``evals`` table (``run_id, step, split, axis, value``):

* memorisation step   first eval step where the *train*-split metric >= threshold
* generalisation step first eval step where the *test*-split metric >= threshold
* grokking delay      generalisation - memorisation
* transition          steps the test metric took from 10% to 90% of its rise
                      (from its first value to its maximum): small = sharp

A run without the needed eval records gets ``status`` saying why, never an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import polars as pl

__all__ = ["GrokkingSummary", "grokking_summary", "first_step_at_least", "rise_window", "compare_runs"]


@dataclass(frozen=True)
class GrokkingSummary:
    axis: str
    threshold: float
    status: str  # generalised | memorised_only | not_memorised | no_evals | no_test_split
    memorisation_step: int | None = None
    generalisation_step: int | None = None
    delay: int | None = None
    rise_start_step: int | None = None
    rise_end_step: int | None = None
    transition_steps: int | None = None
    final_train: float | None = None
    final_test: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def first_step_at_least(steps: list[int], values: list[float], threshold: float) -> int | None:
    return next((s for s, v in zip(steps, values) if v >= threshold), None)


def rise_window(steps: list[int], values: list[float]) -> tuple[int | None, int | None]:
    """Steps where the curve first reaches 10% and 90% of its rise from the first value to its max."""
    if len(values) < 2 or max(values) <= values[0]:
        return None, None
    low, high = values[0], max(values)
    return (first_step_at_least(steps, values, low + 0.1 * (high - low)),
            first_step_at_least(steps, values, low + 0.9 * (high - low)))


def _curve(evals: pl.DataFrame, split: str, axis: str) -> tuple[list[int], list[float]]:
    rows = evals.filter((pl.col("split") == split) & (pl.col("axis") == axis)).sort("step")
    return rows["step"].to_list(), rows["value"].to_list()


def grokking_summary(evals: pl.DataFrame, axis: str = "correctness", threshold: float = 0.9) -> GrokkingSummary:
    """Summarise one run's ``evals`` rows (already filtered to that run)."""
    train_steps, train = _curve(evals, "train", axis)
    test_steps, test = _curve(evals, "test", axis)
    if not train and not test:
        return GrokkingSummary(axis, threshold, "no_evals")
    if not test:
        return GrokkingSummary(axis, threshold, "no_test_split", final_train=train[-1] if train else None)
    memorised = first_step_at_least(train_steps, train, threshold)
    generalised = first_step_at_least(test_steps, test, threshold)
    start, end = rise_window(test_steps, test)
    status = "generalised" if generalised is not None else ("memorised_only" if memorised is not None else "not_memorised")
    return GrokkingSummary(
        axis, threshold, status, memorised, generalised,
        None if memorised is None or generalised is None else generalised - memorised,
        start, end, None if start is None or end is None else end - start,
        train[-1] if train else None, test[-1],
    )


def compare_runs(summaries: dict[str, GrokkingSummary], configs: dict[str, dict],
                 ignore: tuple[str, ...] = ("seed", "output_dir", "resume", "overwrite", "progress")) -> pl.DataFrame:
    """Group runs whose configs differ only in ``ignore``d keys; steps-to-generalise per group.

    Returns ``group, runs, generalised, mean_steps, std_steps, min_steps, max_steps`` where the
    group is a short description of the options that differ between groups.
    """
    keyed = {rid: {k: v for k, v in configs.get(rid, {}).items() if k not in ignore} for rid in summaries}
    varying = sorted({k for cfg in keyed.values() for k in cfg
                      if len({repr(c.get(k)) for c in keyed.values()}) > 1})
    groups: dict[str, list[str]] = {}
    for rid, cfg in keyed.items():
        label = ", ".join(f"{k}={cfg.get(k)}" for k in varying) or "all runs"
        groups.setdefault(label, []).append(rid)
    rows = []
    for label, rids in sorted(groups.items()):
        steps = [summaries[r].generalisation_step for r in rids if summaries[r].generalisation_step is not None]
        series = pl.Series(steps, dtype=pl.Float64)
        rows.append({"group": label, "runs": len(rids), "generalised": len(steps),
                     "mean_steps": series.mean() if steps else None,
                     "std_steps": series.std(ddof=0) if steps else None,
                     "min_steps": min(steps) if steps else None, "max_steps": max(steps) if steps else None})
    return pl.DataFrame(rows, schema={"group": pl.Utf8, "runs": pl.Int64, "generalised": pl.Int64,
                                      "mean_steps": pl.Float64, "std_steps": pl.Float64,
                                      "min_steps": pl.Int64, "max_steps": pl.Int64})
