"""Load scorers by ``module:Class`` and check what they return."""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Sequence

from rg_tracer.errors import UserError

__all__ = ["load_scorer", "run_scorer", "check_scores"]

BUILTIN = {"arithmetic": "rg_tracer.scorers.arithmetic:ArithmeticScorer",
           "reasoning-gym": "rg_tracer.scorers.reasoning_gym:ReasoningGymScorer"}


def load_scorer(spec: str) -> Any:
    """Instantiate ``spec`` (``module:Class`` or a built-in name such as ``arithmetic``)."""
    target = BUILTIN.get(spec, spec)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UserError(f"--scorer {spec!r}: expected 'package.module:ClassName' or one of {', '.join(BUILTIN)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--scorer {spec!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UserError(f"--scorer {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    scorer = obj() if inspect.isclass(obj) else obj
    if not callable(getattr(scorer, "score", None)):
        raise UserError(f"--scorer {spec!r}: object has no score(prompts, completions) method")
    return scorer


def _takes_references(scorer: Any) -> bool:
    params = inspect.signature(scorer.score).parameters
    return "references" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_scores(scores: Any, n: int, name: str = "scorer") -> list[dict[str, float]]:
    """Validate one scorer call: ``n`` dicts of finite numbers, else :class:`UserError`."""
    if not isinstance(scores, (list, tuple)) or len(scores) != n:
        got = len(scores) if isinstance(scores, (list, tuple)) else type(scores).__name__
        raise UserError(f"{name} returned {got} rows for {n} completions; it must return one dict per completion")
    checked = []
    for i, row in enumerate(scores):
        if not isinstance(row, dict):
            raise UserError(f"{name}: row {i} is a {type(row).__name__}, expected a dict of floats")
        for key, value in row.items():
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{name}: sample {i}, key {key!r} is {value!r}; scores must be finite numbers")
        checked.append({str(k): float(v) for k, v in row.items()})
    return checked


def run_scorer(scorer: Any, prompts: Sequence[str], completions: Sequence[str],
               references: Sequence[dict]) -> list[dict[str, float]]:
    """Call ``scorer.score`` (with references when it accepts them) and check the result."""
    if _takes_references(scorer):
        scores = scorer.score(list(prompts), list(completions), references=list(references))
    else:
        scores = scorer.score(list(prompts), list(completions))
    return check_scores(scores, len(completions), type(scorer).__name__)
