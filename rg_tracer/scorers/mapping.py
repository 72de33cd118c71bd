"""Which scorer keys are rewards, tags and verifier signals: the scorer's side of the feedback.

A scorer may declare a class attribute ``feedback_mapping`` of this type; the runtime's
feedback adapter (:mod:`rg_tracer.runtime.feedback_adapter`) applies it to every
completion. Kept free of torch and upstream, so that importing a scorer stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["FeedbackMappingConfig"]


@dataclass(frozen=True)
class FeedbackMappingConfig:
    """How scorer keys become a ``GEPAFeedback``.

    ``reward_keys=None`` takes every scorer key not claimed as a tag, verifier or
    abstain key; an explicit tuple makes missing keys an error. ``verifier_keys``
    maps scorer key -> verifier name. ``task_id_field`` and ``prompt_id_field`` are
    read from the sample's metadata (the dataset row), ``abstain_field`` from the
    scores (truthy means the model abstained).
    """

    reward_keys: tuple[str, ...] | None = None
    tag_keys: tuple[str, ...] = ()
    task_id_field: str = "task"
    prompt_id_field: str = "id"
    abstain_field: str | None = None
    verifier_keys: Mapping[str, str] = field(default_factory=dict)

    def claimed(self) -> set[str]:
        keys = set(self.tag_keys) | set(self.verifier_keys)
        return keys | ({self.abstain_field} if self.abstain_field else set())
