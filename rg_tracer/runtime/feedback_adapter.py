"""Map a scorer's flat dict of floats onto upstream's ``GEPAFeedback``.

A scorer returns one dict per completion; which keys are rewards (mixed into the
training scalar), tags (logged, and visible to upstream's curriculum/safety EMAs) and
verifier signals is decided by the scorer's
:class:`~rg_tracer.scorers.mapping.FeedbackMappingConfig` and applied here, once.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from gepa_dapo_grn import GEPAFeedback

from rg_tracer.errors import UserError
from rg_tracer.scorers.mapping import FeedbackMappingConfig

__all__ = ["make_gepa_feedback"]


def _number(scores: Mapping[str, Any], key: str, sample: str) -> float:
    if key not in scores:
        raise UserError(f"{sample}: scorer output has no key {key!r} (keys: {sorted(scores)})")
    value = scores[key]
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{sample}: key {key!r} is {value!r}; rewards and tags must be finite numbers")
    return float(value)


def make_gepa_feedback(
    scores: Mapping[str, Any],
    config: FeedbackMappingConfig,
    *,
    meta: Mapping[str, Any] | None = None,
    sample: str = "sample",
) -> GEPAFeedback:
    """Build the feedback for one completion; ``sample`` names it in error messages."""
    meta = dict(meta or {})
    claimed = config.claimed()
    reward_keys = config.reward_keys
    if reward_keys is None:
        reward_keys = tuple(k for k in scores if k not in claimed)
    rewards = {k: _number(scores, k, sample) for k in reward_keys}
    tags = {k: _number(scores, k, sample) for k in config.tag_keys}
    verifier = {name: _number(scores, k, sample) for k, name in config.verifier_keys.items()}
    abstained = bool(config.abstain_field and _number(scores, config.abstain_field, sample))
    out_meta = {
        "task_id": str(meta.get(config.task_id_field, "default")),
        "prompt_id": str(meta.get(config.prompt_id_field, sample)),
    }
    return GEPAFeedback(rewards=rewards, tags=tags, verifier=verifier, meta=out_meta, abstained=abstained)
