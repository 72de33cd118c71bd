"""The runtime both searches stand on: ``rg_tracer.dapo`` (RL) and ``rg_tracer.eggroll`` (ES).

* :mod:`.run`              — inputs loaded and checked before anything is written, the prompt
                             order, the one seed function, the Ctrl-C/progress skeleton and
                             the ``run`` record.
* :mod:`.policy_adapter`   — :class:`~.policy_adapter.HFPolicyAdapter`: a ``gepa_dapo_grn``
                             policy over any Hugging Face causal LM; sampling and log-probs.
* :mod:`.decode`           — the lean KV-cached sampling loop; :mod:`.llama_step` its
                             plain-ops decode step for Llama and Qwen2.
* :mod:`.feedback_adapter` — a scorer's dict of floats as upstream's ``GEPAFeedback``.
* :mod:`.evaluation`       — greedy held-out evaluation.
* :mod:`.log_writer`       — the append-only JSONL log.
* :mod:`.checkpoint`       — pickle-free, atomic checkpoints.
* :mod:`.lora`             — LoRA adapters through peft (``--lora``) and their adapters-off KL
                             reference; :mod:`.lora_merge` ``rg-tracer merge``.
* :mod:`.precision`        — ``--dtype``/``--pure-dtype``: autocast over float32 master weights.
* :mod:`.length_groups`    — training forwards over rows of similar length (CPU).
* :mod:`.resources`        — tokens/s and peak memory for a step record's ``timing``.
* :mod:`.distributed`      — the torchrun process group, sharding and collectives.

Nothing is imported here: ``import rg_tracer.runtime`` stays cheap.
"""
