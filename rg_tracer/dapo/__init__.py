"""Trainer core: the policy adapter, feedback mapping, training loop and JSONL log."""

from rg_tracer.dapo.feedback_adapter import FeedbackMappingConfig, make_gepa_feedback

__all__ = ["FeedbackMappingConfig", "make_gepa_feedback", "HFPolicyAdapter", "DAPOHybridTrainer", "train"]


def __getattr__(name: str):
    # torch-heavy pieces load on first use, so ``from rg_tracer.dapo import FeedbackMappingConfig`` stays cheap.
    if name == "HFPolicyAdapter":
        from rg_tracer.dapo.hf_policy_adapter import HFPolicyAdapter

        return HFPolicyAdapter
    if name in ("DAPOHybridTrainer", "train"):
        from rg_tracer.dapo import dapo_hybrid_trainer

        return getattr(dapo_hybrid_trainer, name)
    raise AttributeError(name)
