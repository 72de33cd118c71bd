"""Scorers turn completions into a dict of named floats per completion.

Interface (duck-typed; no base class needed)::

    class MyScorer:
        def score(self, prompts, completions, references) -> list[dict[str, float]]

``references`` holds each prompt's dataset row (``answer`` and any extra fields);
a scorer whose ``score`` takes only ``(prompts, completions)`` is called without it.
Built in: ``arithmetic`` and ``reasoning-gym`` (each reasoning-gym task's own verifier).
Load a custom one with ``--scorer package.module:ClassName``. An optional class
attribute ``feedback_mapping`` (a ``FeedbackMappingConfig``) says which keys are tags
or verifier signals; by default every key is a reward axis.
"""

from rg_tracer.scorers.arithmetic import ArithmeticScorer
from rg_tracer.scorers.loading import check_scores, load_scorer, run_scorer
from rg_tracer.scorers.mapping import FeedbackMappingConfig
from rg_tracer.scorers.reasoning_gym import ReasoningGymScorer

__all__ = ["ArithmeticScorer", "FeedbackMappingConfig", "ReasoningGymScorer", "check_scores", "load_scorer",
           "run_scorer"]
