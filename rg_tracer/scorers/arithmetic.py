"""The built-in arithmetic scorer: correctness, reasoning quality and format.

Axes (all floats per completion):

``correctness``        1 if the completion's final integer equals the reference answer.
``reasoning_quality``  fraction of arithmetic statements ``a op b = c`` written in the
                       completion that are true (0 when it writes none).
``format_penalty``     0 when the completion ends in its answer: its last
                       whitespace-separated word is an integer, alone or closing a
                       statement (``7``, ``so 7``, ``3+4=7``); 1 otherwise (``6%``, ``x7``,
                       ``8*``, no integer). Binary, so stray characters around a number
                       cannot buy part of it back. A penalty: mixer weights are negative.
``answer_closeness``   ``1 / (1 + |answer - reference|)``; 0 when no integer is found.
                       Dense partial credit that lets a randomly initialised model find
                       short numeric answers before it finds exact ones.
``answer_length``      number of characters of the completion (a tag, not a reward).
"""

from __future__ import annotations

import re
from fractions import Fraction

from rg_tracer.scorers.mapping import FeedbackMappingConfig

__all__ = ["ArithmeticScorer", "final_integer", "statement_accuracy"]

_INT = re.compile(r"-?\d+")
_STATEMENT = re.compile(r"(-?\d+)\s*([-+*/%])\s*(-?\d+)\s*=\s*(-?\d+)")
_ENDS_IN_ANSWER = re.compile(r"(?:[-+*/%()\d]+=)?-?\d+")


def final_integer(text: str) -> int | None:
    """The last integer written in ``text``, or ``None``."""
    found = _INT.findall(text)
    return int(found[-1]) if found else None


def _evaluate(a: int, op: str, b: int) -> Fraction | None:
    if op == "+":
        return Fraction(a + b)
    if op == "-":
        return Fraction(a - b)
    if op == "*":
        return Fraction(a * b)
    if b == 0:
        return None
    return Fraction(a, b) if op == "/" else Fraction(a % b)


def statement_accuracy(text: str) -> float:
    """Fraction of ``a op b = c`` statements in ``text`` that are true; 0 when there are none."""
    statements = _STATEMENT.findall(text)
    if not statements:
        return 0.0
    true = sum(_evaluate(int(a), op, int(b)) == int(c) for a, op, b, c in statements)
    return true / len(statements)


class ArithmeticScorer:
    """Scores completions against ``references[i]["answer"]`` (an integer as text)."""

    feedback_mapping = FeedbackMappingConfig(tag_keys=("answer_length",))

    def score(self, prompts, completions, references):
        return [self._score_one(c, r) for c, r in zip(completions, references)]

    @staticmethod
    def _score_one(completion: str, reference: dict) -> dict[str, float]:
        answer = final_integer(completion)
        try:
            expected = int(str(reference["answer"]).strip())
        except (KeyError, ValueError):
            expected = None
        words = completion.split()
        penalty = 0.0 if words and _ENDS_IN_ANSWER.fullmatch(words[-1]) else 1.0
        return {
            "correctness": float(answer is not None and answer == expected),
            "reasoning_quality": statement_accuracy(completion),
            "format_penalty": penalty,
            "answer_closeness": 0.0 if answer is None or expected is None else 1.0 / (1.0 + abs(answer - expected)),
            "answer_length": float(len(completion)),
        }
