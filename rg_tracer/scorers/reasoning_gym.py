"""The built-in ``reasoning-gym`` scorer: each task's own verifier, on rows of ``rg-tracer data reasoning-gym``.

The dataset row names the task (``task``) and holds what its verifier reads (``metadata``,
``task_config``; :mod:`rg_tracer.tasks.reasoning_gym`). The answer is the text inside the
completion's last ``<answer>...</answer>`` when it has one (reasoning-gym's convention), else
the whole completion, stripped.

Axes (all floats per completion):

``correctness``     the task's ``score_answer(answer, entry)``, in [0, 1]; some tasks give
                    partial credit (e.g. a close number). 0 when the verifier fails on the answer.
``format_penalty``  1 when the answer is empty or overlong (longer than
                    ``2 * len(reference) + 16`` characters), else 0. A penalty: mixer weights
                    are negative (the default mixer weighs it -0.25).
``answer_length``   characters of the answer (a tag, not a reward).
"""

from __future__ import annotations

import math
import re

from rg_tracer.errors import UserError
from rg_tracer.scorers.mapping import FeedbackMappingConfig
from rg_tracer.tasks.reasoning_gym import entry_of, require_reasoning_gym, verifier

__all__ = ["ReasoningGymScorer", "extract_answer", "is_overlong"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(completion: str) -> str:
    """The last ``<answer>`` block's text, else the whole completion; stripped."""
    tagged = _ANSWER_TAG.findall(completion)
    return (tagged[-1] if tagged else completion).strip()


def is_overlong(answer: str, reference: str) -> bool:
    return len(answer) > 2 * len(reference) + 16


class ReasoningGymScorer:
    """Scores completions with the verifier of the reasoning-gym task each dataset row names."""

    feedback_mapping = FeedbackMappingConfig(tag_keys=("answer_length",))

    def __init__(self) -> None:
        require_reasoning_gym()  # fails at load, in one line naming the extra

    def score(self, prompts, completions, references):
        return [self._score_one(c, r) for c, r in zip(completions, references)]

    @staticmethod
    def _score_one(completion: str, row: dict) -> dict[str, float]:
        if "metadata" not in row or "task" not in row:
            raise UserError(f"dataset row {row.get('id', '?')!r} has no reasoning-gym task and metadata; the "
                            "reasoning-gym scorer reads rows written by `rg-tracer data reasoning-gym`")
        score_answer = verifier(str(row["task"]), row.get("task_config") or {})
        answer = extract_answer(completion)
        try:
            correct = float(score_answer(answer, entry_of(row)))
        except Exception:  # noqa: BLE001 - a verifier that chokes on a model's answer: the answer is wrong
            correct = 0.0
        reference = str(row.get("answer", ""))
        return {
            "correctness": correct if math.isfinite(correct) else 0.0,
            "format_penalty": float(not answer or is_overlong(answer, reference)),
            "answer_length": float(len(answer)),
        }
