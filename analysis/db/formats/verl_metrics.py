"""verl's metric names under rg-tracer's, and the record-building helpers of the verl reader.

Out of ``verl.py`` (:mod:`analysis.db.formats.verl`) so that the reader stays under ~300
lines: the name tables, the mapping of a metrics line onto ``rl``, ``timing`` and eval
metrics, dump lines as samples, and the ``run`` and ``eval`` records.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rg_tracer.schema import RL_KEYS, SCHEMA, eval_record, run_record, validate

__all__ = ["RL_NAMES"]

#: verl metric -> rg-tracer ``rl`` name (same quantity). KL is chosen per step (:func:`_rl`).
RL_NAMES = {
    "actor/pg_loss": "policy_loss",
    "actor/entropy": "entropy",
    "actor/pg_clipfrac": "clip_ratio",
    "actor/grad_norm": "grad_norm",
    "actor/lr": "lr",
    "critic/score/mean": "reward_mixed_mean",
    "response_length/mean": "completion_length_mean",
    "response_length/min": "completion_length_min",
    "response_length/max": "completion_length_max",
    "response_length/clip_ratio": "truncated_frac",
}
#: the step number again
DROPPED = ("training/global_step",)
TIMING_PREFIXES = ("timing_s/", "timing_per_token_ms/")
#: the fields ``_dump_generations`` writes itself; every other key is reward extra info
DUMP_FIELDS = ("input", "output", "gts", "score", "step")
#: eval samples kept per split (as rg-tracer's own evals)
EVAL_SAMPLES = 8
_VAL_KEY = re.compile(r"^val-(?:core|aux)/(?P<source>.+)/(?P<var>[^/]+)/"
                      r"(?P<metric>(?:mean|std)@(?P<n>[0-9]+)|(?:best|worst|maj)@[0-9]+/(?:mean|std))$")


def _number(value: Any) -> float | int | None:
    """A finite float/int (bool as 0/1), else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else float(value) if abs(value) < 1.7e308 else None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _lookup(config: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


class _Corrupt(Exception):
    pass


def _read_dump(path: Path) -> list[dict]:
    """The samples of one dump file; :class:`_Corrupt` says what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Corrupt(f"unreadable ({exc})") from None
    if data and not data.endswith(b"\n"):
        raise _Corrupt("the last line is cut off (verl ends every dump with a newline)")
    samples = []
    for number, line in enumerate(data.split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise _Corrupt(f"line {number}: not JSON ({exc})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("input"), str) or not isinstance(obj.get("output"), str):
            raise _Corrupt(f"line {number}: not a verl dump line (needs string input and output)")
        samples.append(obj)
    return samples


def _prompt_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _axes(sample: dict) -> dict[str, float]:
    """Reward axes of one dump line: ``score`` and every numeric reward-extra-info key."""
    axes = {}
    for key, value in sample.items():
        if key in ("input", "output", "gts", "step"):
            continue
        number = _number(value)
        if number is not None:
            axes[key] = float(number)
    return axes


def _val_axes(line: dict) -> dict[str, float]:
    """A validation sample's axes: as training's, less ``reward`` (``_validate``'s copy of ``score``)."""
    axes = _axes(line)
    if "score" in axes:
        axes.pop("reward", None)
    return axes


def _samples(lines: list[dict]) -> tuple[list[dict], list[dict]]:
    """``gepa`` and ``generation`` lists, prompt-major (prompts in order of first appearance)."""
    by_prompt: dict[str, list[dict]] = {}
    for line in lines:
        by_prompt.setdefault(line["input"], []).append(line)
    gepa, generation = [], []
    for text, group in by_prompt.items():
        pid = _prompt_id(text)
        for k, line in enumerate(group):
            meta = {key: value for key, value in line.items()
                    if key not in DUMP_FIELDS and _number(value) is None}
            if isinstance(line.get("data_source"), str):
                meta["task_id"] = line["data_source"]
            if line.get("gts") is not None:
                meta["ground_truth"] = line["gts"]
            meta["prompt_id"] = pid
            gepa.append({"rewards": _axes(line), "tags": {}, "verifier": {}, "meta": meta, "abstained": False})
            generation.append({"prompt_id": pid, "completion_id": f"{pid}#{k}", "prompt_tokens": 0,
                               "completion_tokens": 0, "truncated": False, "completion": line["output"]})
    return gepa, generation


# -- mapping -------------------------------------------------------------------------------
@dataclass
class _StepMetrics:
    """One step's metrics line, sorted: training metrics, timing, validation means per data
    source (``{source: {var: (n, mean@n, verl name)}}``) and the other validation numbers."""

    train: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    means: dict[str, dict[str, tuple[int, float, str]]] = field(default_factory=dict)
    val_other: dict = field(default_factory=dict)


def _split_metrics(data: dict) -> _StepMetrics:
    out = _StepMetrics()
    for key, value in data.items():
        number = _number(value)
        if value is not None and number is None:
            continue  # a list, a string: no metric
        match = _VAL_KEY.match(key)
        if match and match["n"] is not None and match["metric"].startswith("mean@") and number is not None:
            var = out.means.setdefault(match["source"], {})
            n = int(match["n"])
            if match["var"] in var and n <= var[match["var"]][0]:
                out.val_other[key] = number
                continue
            if match["var"] in var:  # a mean over more samples per prompt: verl's core one
                old = var[match["var"]]
                out.val_other[old[2]] = old[1]
            var[match["var"]] = (n, float(number), key)
        elif key.startswith("val-"):
            out.val_other[key] = number
        elif key.startswith(TIMING_PREFIXES):
            out.timing[key] = number
        elif key not in DROPPED:
            out.train[key] = number
    return out


def _eval_axes(var_means: dict[str, tuple[int, float, str]]) -> tuple[dict[str, float], dict[str, float]]:
    """Eval metrics ``{axis: mean}`` and the means left out (under verl's names). verl's
    ``reward`` var is the score (``score`` axis) unless the reward function reports ``score`` too."""
    metrics, left = {}, {}
    for var, (_, mean, key) in var_means.items():
        if var == "reward":
            if "score" in var_means:
                left[key] = mean
                continue
            var = "score"
        metrics[var] = mean
    return metrics, left


def _rl(train: dict) -> dict:
    """verl's step metrics under rg-tracer's names (:data:`RL_NAMES`), the rest under verl's."""
    m = dict(train)
    rl: dict[str, Any] = {"loss": None}  # verl logs no total loss
    if "actor/kl_coef" in m:  # actor.use_kl_loss: KL(policy || ref) in the loss
        rl["kl"], rl["kl_coeff"] = m.pop("actor/kl_loss", None), m.pop("actor/kl_coef")
    elif "actor/reward_kl_penalty" in m:  # algorithm.use_kl_in_reward
        rl["kl"] = m.pop("actor/reward_kl_penalty")
        if "actor/reward_kl_penalty_coeff" in m:
            rl["kl_coeff"] = m.pop("actor/reward_kl_penalty_coeff")
    else:
        rl["kl"] = None  # no KL term (actor/kl_loss, if logged, is verl's 0.0 placeholder)
    for old, new in RL_NAMES.items():
        if old in m:
            rl[new] = m.pop(old)
    for key in RL_KEYS:
        rl.setdefault(key, None)
    rl.update(m)
    return rl


def _header(kind: str, fields: dict) -> dict:
    return {"schema": SCHEMA, "kind": kind, **fields}


def _run(config: dict) -> dict:
    model = {"name_or_path": path} if isinstance(path := _lookup(config, "actor_rollout_ref", "model", "path"),
                                                  str) else {}
    dataset = {key: value for key, value in (("path", _lookup(config, "data", "train_files")),
                                             ("eval_path", _lookup(config, "data", "val_files")))
               if value is not None}
    fields = run_record(config=config, versions={}, model=model, dataset=dataset,
                        reward_weights={"score": 1.0}, resumed_from_step=None)
    seed = _lookup(config, "data", "seed")
    fields["seed"] = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    fields["time"] = None
    return validate(_header("run", fields))


def _eval(step: int, source: str, metrics: dict, val_lines: list[dict] | None, one_source: bool) -> dict:
    n, samples = None, None
    if val_lines is not None and one_source:
        prompts: dict[str, dict] = {}
        for line in val_lines:
            prompts.setdefault(line["input"], line)
        n = len(prompts)
        samples = [{"prompt_id": _prompt_id(text), "prompt": text, "answer": line.get("gts"),
                    "completion": line["output"], "scores": _val_axes(line)}
                   for text, line in list(prompts.items())[:EVAL_SAMPLES]]
    fields = eval_record(step=step, split=source, n=n, metrics=metrics, samples=samples)
    if n is None:
        del fields["n"]  # unknown: readers read it as null (with a note)
        return validate(_header("eval", fields), [])
    return validate(_header("eval", fields))
