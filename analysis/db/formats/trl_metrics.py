"""TRL's metric names under rg-tracer's, and the record-building helpers of the TRL reader.

Out of ``trl.py`` (:mod:`analysis.db.formats.trl`) so that the reader stays under ~300 lines:
the name tables (``docs/peers.md``, section TRL) and the functions that turn ``log_history``
entries into ``rl`` metrics, ``eval`` records and reward weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from analysis.db.formats import note, record
from rg_tracer.schema import RL_KEYS, eval_record

__all__ = ["RENAMED"]

#: TRL ``log_history`` names of the quantities rg-tracer logs under its own name (``rl``).
RENAMED = {
    "loss": "loss",
    "policy_loss": "policy_loss",
    "kl": "kl",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "entropy": "entropy",
    "reward": "reward_mixed_mean",
    "reward_std": "reward_mixed_std",
    "completions/mean_length": "completion_length_mean",
    "completions/min_length": "completion_length_min",
    "completions/max_length": "completion_length_max",
    "completions/clipped_ratio": "truncated_frac",
}
#: TRL's ``rewards/<func>/mean`` and ``/std`` become ``reward_mean/<func>`` and ``reward_std/<func>``.
_PER_FUNC = re.compile(r"rewards/(.+)/(mean|std)")
#: Not step metrics: the step number, its wall time (into ``timing``), the closing summary.
_NOT_METRICS = {"step", "step_time"}
_SUMMARY = ("train_runtime", "train_loss", "train_samples_per_second", "train_steps_per_second", "total_flos")
def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _entries(state: dict | None) -> tuple[dict[int, dict], dict[int, dict], dict | None]:
    """``log_history`` as train entries by step, eval entries by step, and the closing summary."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    summary = None
    for entry in (state or {}).get("log_history") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int) or entry["step"] < 0:
            continue
        if any(k in entry for k in _SUMMARY):
            summary = entry
        elif any(k.startswith("eval_") for k in entry):
            evals.setdefault(entry["step"], {}).update(entry)
        else:
            train.setdefault(entry["step"], {}).update(entry)
    return train, evals, summary


def _rl(entry: dict, args: dict) -> dict:
    """One log entry's metrics under rg-tracer's names (``docs/peers.md``)."""
    rl: dict = {key: None for key in RL_KEYS}  # TRL logs no clip_ratio of rg-tracer's meaning
    per_group = args.get("scale_rewards") in ("group", "none") and args.get(
        "multi_objective_aggregation", "sum_then_normalize") == "sum_then_normalize"
    for key, value in entry.items():
        if key in _NOT_METRICS or not (_number(value) or value is None):
            continue
        m = _PER_FUNC.fullmatch(key)
        if m:
            name = f"reward_{m.group(2)}/{m.group(1)}"
        elif key == "frac_reward_zero_std" and per_group:
            name = "zero_std_group_frac"  # the share of groups whose rewards were all equal
        else:
            name = RENAMED.get(key, key)
        rl[name] = value
    if _number(args.get("beta")):
        rl["kl_coeff"] = args["beta"]
        if args["beta"] == 0:
            rl["kl"] = None  # not computed (TRL skips the reference model)
    return rl


def _steps(steps: list[int]) -> str:
    """``1-3, 7`` for [1, 2, 3, 7]."""
    out, run = [], []
    for s in sorted(steps):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def _reward_weights(args: dict, names: list[str], order: list[str] | None, run_dir: Path) -> dict | None:
    if not args or not names:
        return None
    weights = args.get("reward_weights")
    if weights is None:
        return {name: 1.0 for name in names}  # TRL: every reward function weighs 1.0 unless given
    if not isinstance(weights, list) or not all(_number(w) for w in weights) or len(weights) != len(names):
        note(f"{run_dir}: reward_weights {weights!r} do not match the {len(names)} reward functions; left unknown")
        return None
    if order is None and len(set(weights)) > 1:
        note(f"{run_dir}: reward_weights {weights} follow the reward functions' order, which only the "
             "completions files show (log_completions=False); left unknown")
        return None
    return {name: float(w) for name, w in zip(order or names, weights)}


def _eval(step: int, entry: dict) -> Iterator[dict]:
    metrics = {m.group(1): v for k, v in entry.items()
               if (m := _PER_FUNC.fullmatch(k.removeprefix("eval_"))) and m.group(2) == "mean" and _number(v)}
    if not metrics:
        return
    fields = eval_record(step=step, split="eval", n=0, metrics=metrics)
    del fields["n"]  # TRL does not log how many prompts it evaluated: the loader reads n as unknown
    yield record("eval", **fields)
