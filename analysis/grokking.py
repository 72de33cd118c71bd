"""Grokking diagnostics from eval curves: when a run memorised, when it generalised.

Pure functions over the ``evals`` table (``run_id, step, split, n, axis, value``; ``n`` is the
number of eval prompts behind ``value``, and may be null or absent):

* memorisation step   the step from which the *train*-split metric is confidently >= threshold
* generalisation step the same for the *test* split
* grokking delay      generalisation - memorisation
* transition          steps the test metric took from 10% to 90% of its rise
                      (from its first value to its maximum): small = sharp

How a step is called (:func:`call_step`; calibrated in ``benchmarks/calibrate_grokking.py``,
table in ``docs/grokking.md``). An eval of ``n`` prompts with accuracy ``value`` is
``value * n`` successes out of ``n`` (fractional scores allowed: a mean of [0, 1] scores has at
most the binomial variance, so the bound stays conservative). The curve is cut into maximal
stretches of consecutive evals that are each at or above the threshold. The called step is
the first eval of the earliest stretch that is at least ``k`` (3) evals long and whose pooled
accuracy over its first ``j >= k`` evals has a one-sided Wilson score lower confidence bound
(Wilson 1927; level ``confidence``, 0.99) at or above the threshold. Wilson's interval is the
one Brown, Cai & DasGupta (2001) recommend over the Wald interval for small n and p near 1;
Clopper & Pearson (1934) would be more conservative still. Pooling is what lets a small split
(the demo's n = 11, where even 11/11 has a 99% Wilson lower bound of 0.67) ever be called;
requiring every pooled eval to be at or above the threshold keeps a rising curve's later,
higher evals from pulling the call earlier than its crossing.

The call carries a step interval ``[lo, hi]``: ``hi`` is the eval at which the pooled bound
first passed (by then the curve was confidently above the threshold), ``lo`` the last eval
before the call whose own one-sided Wilson *upper* bound is below the threshold (confidently
below; 0 when there is none). For a curve that crosses the threshold once, the true crossing
lies in ``(lo, hi]`` unless one of the two bounds failed. The delay's interval is
``[gen_lo - mem_hi, gen_hi - mem_lo]``.

Eval records without ``n`` (null) fall back to persistence alone: the first eval of the first
stretch of ``k`` consecutive evals at or above the threshold, with ``[lo, hi]`` = [the eval
before the stretch, the ``k``-th eval of it], which reflects only the eval spacing, not sampling
error. ``rule`` says which rule each split used.

A run without the needed eval records gets ``status`` saying why, never an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import polars as pl

__all__ = ["GrokkingSummary", "StepCall", "grokking_summary", "call_step", "wilson_bounds",
           "first_step_at_least", "rise_window", "compare_runs", "DEFAULT_K", "DEFAULT_CONFIDENCE", "STATUSES"]

#: evals a stretch must last before it can be called (and the whole rule when n is not logged)
DEFAULT_K = 3
#: one-sided level of the Wilson bounds (chosen by benchmarks/calibrate_grokking.py)
DEFAULT_CONFIDENCE = 0.99

STATUSES = ("generalised", "generalisation_unconfirmed", "memorised_only", "not_memorised",
            "no_evals", "no_test_split")


@dataclass(frozen=True)
class GrokkingSummary:
    axis: str
    threshold: float
    # generalised | generalisation_unconfirmed | memorised_only | not_memorised | no_evals | no_test_split
    status: str
    memorisation_step: int | None = None
    generalisation_step: int | None = None
    delay: int | None = None
    rise_start_step: int | None = None
    rise_end_step: int | None = None
    transition_steps: int | None = None
    final_train: float | None = None
    final_test: float | None = None
    memorisation_ci: list[int] | None = None  # [lo, hi] steps: the train curve crossed in (lo, hi]
    generalisation_ci: list[int] | None = None  # the same for the test curve
    delay_ci: list[int] | None = None  # [gen_lo - mem_hi, gen_hi - mem_lo]
    test_n: int | None = None  # eval prompts per test eval (median); None when not logged
    train_n: int | None = None
    rule: str | None = None  # the calling rule (see call_step); "test: ...; train: ..." when they differ

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StepCall:
    """Where one curve is called above the threshold; ``step`` None when it is not."""

    step: int | None
    ci: list[int] | None
    rule: str
    reached: bool  # some eval was at or above the threshold (called or not)


def first_step_at_least(steps: list[int], values: list[float], threshold: float) -> int | None:
    return next((s for s, v in zip(steps, values) if v >= threshold), None)


def rise_window(steps: list[int], values: list[float]) -> tuple[int | None, int | None]:
    """Steps where the curve first reaches 10% and 90% of its rise from the first value to its max."""
    if len(values) < 2 or max(values) <= values[0]:
        return None, None
    low, high = values[0], max(values)
    return (first_step_at_least(steps, values, low + 0.1 * (high - low)),
            first_step_at_least(steps, values, low + 0.9 * (high - low)))


def wilson_bounds(successes: float, n: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """One-sided Wilson (1927) score bounds at level ``confidence`` for ``successes`` of ``n``.

    Returns ``(lower, upper)``; each is a one-sided bound at ``confidence`` (statsmodels'
    two-sided Wilson interval at ``2 * confidence - 1``).
    """
    if n <= 0:
        return 0.0, 1.0
    # imported here: statsmodels pulls in scipy.stats (slow, and it probes torch)
    from statsmodels.stats.proportion import proportion_confint

    successes = min(max(successes, 0.0), n)
    lower, upper = proportion_confint(successes, n, alpha=2 * (1 - confidence), method="wilson")
    return max(0.0, float(lower)), min(1.0, float(upper))


def _stretches(values: list[float], threshold: float) -> list[tuple[int, int]]:
    """Maximal ``[a, b]`` index ranges of consecutive values at or above ``threshold``."""
    out, start = [], None
    for i, v in enumerate(values):
        if v >= threshold and start is None:
            start = i
        elif v < threshold and start is not None:
            out.append((start, i - 1))
            start = None
    if start is not None:
        out.append((start, len(values) - 1))
    return out


def rule_name(k: int = DEFAULT_K, confidence: float | None = DEFAULT_CONFIDENCE) -> str:
    if confidence is None:
        return f"consecutive_k{k} (n not logged)"
    return f"wilson{100 * confidence:g}_pooled_k{k}"


def call_step(steps: list[int], values: list[float], ns: list[int | None] | None, threshold: float,
              *, k: int = DEFAULT_K, confidence: float = DEFAULT_CONFIDENCE) -> StepCall:
    """Call the step from which one curve is confidently at or above ``threshold``.

    Rule (module docstring): the first eval of the earliest stretch of consecutive evals each
    >= ``threshold`` that lasts >= ``k`` evals and whose pooled one-sided Wilson (1927) lower
    bound at ``confidence`` reaches ``threshold`` (Brown, Cai & DasGupta 2001 for the choice of
    Wilson over Wald; Clopper & Pearson 1934 is the exact, more conservative alternative).
    When any eval lacks ``n`` it falls back to ``k`` consecutive evals >= ``threshold``.
    """
    reached = any(v >= threshold for v in values)
    known = ns is not None and len(ns) == len(values) and all(n is not None and n > 0 for n in ns)
    rule = rule_name(k, confidence if known else None)
    for a, b in _stretches(values, threshold):
        if b - a + 1 < k:
            continue
        if not known:
            lo = steps[a - 1] if a > 0 else 0
            return StepCall(steps[a], [lo, steps[a + k - 1]], rule, reached)
        hits = trials = 0.0
        for j in range(a, b + 1):
            hits += values[j] * ns[j]
            trials += ns[j]
            if j - a + 1 >= k and wilson_bounds(hits, trials, confidence)[0] >= threshold:
                below = [i for i in range(a) if wilson_bounds(values[i] * ns[i], ns[i], confidence)[1] < threshold]
                return StepCall(steps[a], [steps[below[-1]] if below else 0, steps[j]], rule, reached)
    return StepCall(None, None, rule, reached)


def _curve(evals: pl.DataFrame, split: str, axis: str) -> tuple[list[int], list[float], list[int | None]]:
    rows = evals.filter((pl.col("split") == split) & (pl.col("axis") == axis)
                        & pl.col("value").is_not_null() & pl.col("value").is_not_nan()).sort("step")
    ns = rows["n"].to_list() if "n" in rows.columns else [None] * rows.height
    return rows["step"].to_list(), rows["value"].to_list(), ns


def _median_n(ns: list[int | None]) -> int | None:
    known = sorted(n for n in ns if n is not None)
    return None if not known or len(known) < len(ns) else int(known[len(known) // 2])


def grokking_summary(evals: pl.DataFrame, axis: str = "correctness", threshold: float = 0.9, *,
                     k: int = DEFAULT_K, confidence: float = DEFAULT_CONFIDENCE) -> GrokkingSummary:
    """Summarise one run's ``evals`` rows (already filtered to that run); see :func:`call_step`.

    ``status`` is ``generalised`` (the test split is called), ``generalisation_unconfirmed``
    (some test eval reached the threshold but the curve is not confidently above it),
    ``memorised_only`` (only the train split is called), ``not_memorised``, ``no_evals`` or
    ``no_test_split``.
    """
    train_steps, train, train_ns = _curve(evals, "train", axis)
    test_steps, test, test_ns = _curve(evals, "test", axis)
    if not train and not test:
        return GrokkingSummary(axis, threshold, "no_evals")
    if not test:
        return GrokkingSummary(axis, threshold, "no_test_split", final_train=train[-1] if train else None,
                               train_n=_median_n(train_ns))
    mem = call_step(train_steps, train, train_ns, threshold, k=k, confidence=confidence)
    gen = call_step(test_steps, test, test_ns, threshold, k=k, confidence=confidence)
    start, end = rise_window(test_steps, test)
    if gen.step is not None:
        status = "generalised"
    elif gen.reached:
        status = "generalisation_unconfirmed"
    else:
        status = "memorised_only" if mem.step is not None else "not_memorised"
    both = mem.step is not None and gen.step is not None
    delay_ci = None
    if both and mem.ci is not None and gen.ci is not None:
        delay_ci = [gen.ci[0] - mem.ci[1], gen.ci[1] - mem.ci[0]]
    rule = gen.rule if not train or mem.rule == gen.rule else f"test: {gen.rule}; train: {mem.rule}"
    return GrokkingSummary(
        axis, threshold, status, mem.step, gen.step,
        gen.step - mem.step if both else None,
        start, end, None if start is None or end is None else end - start,
        train[-1] if train else None, test[-1],
        memorisation_ci=mem.ci, generalisation_ci=gen.ci, delay_ci=delay_ci,
        test_n=_median_n(test_ns), train_n=_median_n(train_ns) if train else None, rule=rule,
    )


def compare_runs(summaries: dict[str, GrokkingSummary], configs: dict[str, dict],
                 ignore: tuple[str, ...] = ("seed", "output_dir", "resume", "overwrite", "progress")) -> pl.DataFrame:
    """Group runs whose configs differ only in ``ignore``d keys; steps-to-generalise per group.

    Returns ``group, runs, generalised, mean_steps, std_steps, min_steps, max_steps, no_evals``
    where the group is a short description of the options that differ between groups (from
    each run's first ``run`` record), ``runs`` counts the group's runs that have test-split
    evals, ``generalised`` those of them called generalised (the n of the statistics),
    ``std_steps`` is the sample std (ddof 1; null below 2 runs) of their generalisation
    steps, and ``no_evals`` counts the group's runs without test-split evals (status
    ``no_evals`` or ``no_test_split``), which are left out of every other column.
    Runs that never generalised are not in the mean: it is the mean over those that did.
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
        with_evals = [r for r in rids if summaries[r].status not in ("no_evals", "no_test_split")]
        steps = [summaries[r].generalisation_step for r in with_evals if summaries[r].generalisation_step is not None]
        series = pl.Series(steps, dtype=pl.Float64)
        rows.append({"group": label, "runs": len(with_evals), "generalised": len(steps),
                     "mean_steps": series.mean() if steps else None,
                     "std_steps": series.std(ddof=1) if len(steps) > 1 else None,
                     "min_steps": min(steps) if steps else None, "max_steps": max(steps) if steps else None,
                     "no_evals": len(rids) - len(with_evals)})
    return pl.DataFrame(rows, schema={"group": pl.Utf8, "runs": pl.Int64, "generalised": pl.Int64,
                                      "mean_steps": pl.Float64, "std_steps": pl.Float64,
                                      "min_steps": pl.Int64, "max_steps": pl.Int64, "no_evals": pl.Int64})
