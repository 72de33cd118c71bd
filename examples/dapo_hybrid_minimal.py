#!/usr/bin/env python
"""The trainer core in one screen: a tiny real model, the real DAPOTrainer, five steps.

    python examples/dapo_hybrid_minimal.py [LOG]   # default LOG: examples/dapo_hybrid_minimal.jsonl

It wires the pieces that ``rg-tracer train`` wires for you (sample -> score ->
GEPAFeedback -> DAPOTrainer.train_step -> JSONL), so you can see each contract.
"""

import sys
import tempfile
from pathlib import Path

import torch
from gepa_dapo_grn import DAPOConfig, DAPOTrainer, RewardMixerConfig
from gepa_dapo_grn.dapo_core import DAPOBatch

from rg_tracer.dapo.optim import ClippingOptimizer
from rg_tracer.models import TinyModelSpec, init_model, load_model, quiet_transformers
from rg_tracer.runtime.feedback_adapter import make_gepa_feedback
from rg_tracer.runtime.log_writer import JsonlLogger
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.scorers import ArithmeticScorer, FeedbackMappingConfig

G = 4  # completions per prompt
PROMPTS = [("2+3=", "5"), ("4+4=", "8"), ("1+6=", "7"), ("0+9=", "9")]
LOG = Path(__file__).with_suffix(".jsonl")


def main(log_path: Path = LOG) -> None:
    torch.set_num_threads(1)
    quiet_transformers()
    model_dir = Path(tempfile.mkdtemp()) / "model"
    init_model(model_dir, TinyModelSpec(arch="qwen2", layers=1, hidden=32, heads=2))
    model, tokenizer = load_model(str(model_dir))
    policy = HFPolicyAdapter(model, tokenizer)
    # Clip outside upstream (max_grad_norm=inf there) so the pre-clip norm can be logged.
    optimizer = ClippingOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), max_grad_norm=1.0)
    trainer = DAPOTrainer(
        policy, optimizer,
        config=DAPOConfig(group_size=G, kl_coeff=0.0, max_grad_norm=float("inf")),
        # Explicit weights: upstream's default mixes every reward with weight 0.
        reward_mixer=RewardMixerConfig(weights={"correctness": 1.0, "format_penalty": -0.25}, normalize=False),
    )
    scorer, mapping = ArithmeticScorer(), FeedbackMappingConfig(tag_keys=("answer_length",))
    log_path.unlink(missing_ok=True)
    log = JsonlLogger(log_path)
    for step in range(1, 6):
        rollout = policy.sample([p for p, _ in PROMPTS], G, max_new_tokens=4)  # prompt-major groups
        refs = [{"id": f"p{i}", "task": "addition", "answer": a} for i, (_, a) in enumerate(PROMPTS) for _ in range(G)]
        scores = scorer.score([p for p, _ in PROMPTS for _ in range(G)], rollout.completions, refs)
        feedbacks = [make_gepa_feedback(s, mapping, meta=r) for s, r in zip(scores, refs)]
        logp, _ = policy.score_for_update(rollout.actions, **rollout.inputs)
        result = trainer.train_step(DAPOBatch(rollout.inputs, rollout.actions, logp.detach()), feedbacks)
        m = result.metrics
        rl = {"loss": m["loss/total"], "policy_loss": m["loss/policy"], "kl": m["kl/value"],
              "clip_ratio": 0.0,  # one update per fresh batch: the ratio is exactly 1
              "lr": optimizer.param_groups[0]["lr"], "grad_norm": optimizer.last_grad_norm, **m}
        generation = [
            {"prompt_id": r["id"], "completion_id": f"{r['id']}#{i % G}", "prompt_tokens": pt,
             "completion_tokens": ct, "truncated": tr, "completion": text}
            for i, (r, pt, ct, tr, text) in enumerate(zip(refs, rollout.prompt_tokens, rollout.completion_tokens,
                                                          rollout.truncated, rollout.completions))
        ]
        log.write("step", step=step, rl=rl, gepa=[f.to_dict() for f in feedbacks], generation=generation,
                  curriculum={}, safety={})
        print(f"step {step}: loss {result.metrics['loss/total']:.4f} "
              f"correct {sum(s['correctness'] for s in scores) / len(scores):.2f}")
    log.close()
    print(f"log: {log_path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else LOG)
