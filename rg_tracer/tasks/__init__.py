"""Procedural datasets with clean held-out splits for grokking experiments.

``rg-tracer data TASK --out DIR`` writes ``DIR/train.jsonl`` and ``DIR/test.jsonl`` in the
trainer's dataset format (``id, task, prompt, answer`` plus task fields) and
``DIR/dataset.json`` describing how they were made. Every generator checks its own
output before writing: no test prompt appears in train (by SHA-256 of the prompt
text) and every answer is recomputed independently.

``rg-tracer data reasoning-gym --task NAME`` (:mod:`rg_tracer.tasks.reasoning_gym`) writes
reasoning-gym tasks the same way, each answer checked by the task's own verifier.
"""

from rg_tracer.tasks.generators import GENERATORS, Split, make_split, write_split

__all__ = ["GENERATORS", "Split", "make_split", "write_split"]
