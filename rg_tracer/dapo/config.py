"""``rg-tracer train`` options: :class:`TrainConfig`, the shared :class:`~rg_tracer.options.RunOptions`
plus what DAPO needs, grouped by concern; each field's help is written once.

``rg-tracer train`` and ``scripts/train_dapo_hybrid.py`` build their click options from
these fields, so a new option is added here only. Cross-field rules live in :meth:`rules`
and say the value, the rule and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from rg_tracer.errors import UserError
from rg_tracer.options import EVALUATION, INPUTS, MACHINE, RUN_DIR, SAMPLING, RunOptions, opt, redefault

__all__ = ["TrainConfig", "parse_betas", "format_floats", "largest_divisor"]

STEPS, OPTIMIZER, OBJECTIVE, GROKKING = "Steps and batches", "Optimizer", "DAPO objective", "Grokking diagnostics"
LORA = "LoRA adapters"


WEIGHT_DECAY_KINDS = ("biases", "norms", "embeddings")
#: AdamW's step moves each weight by about the learning rate: above this a step wrecks the model.
MAX_LEARNING_RATE = 1.0


def parse_betas(value) -> tuple[float, float]:
    if isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [p.strip() for p in str(value).split(",")]
    try:
        betas = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        betas = ()
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise UserError(f"--adam-betas {value!r} must be two numbers B1,B2 each in [0, 1), e.g. --adam-betas 0.9,0.98")
    return betas


def format_floats(values) -> str:
    return ",".join(repr(float(v)) for v in values)


def _parse_names(value) -> tuple[str, ...]:
    parts = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    return tuple(dict.fromkeys(p for p in (str(p).strip() for p in parts) if p))


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` not above ``at_most`` (1 at least): a fix to suggest."""
    return max((d for d in range(1, min(n, at_most) + 1) if n % d == 0), default=1)


def _parse_exclude(value) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        parts = [str(p).strip() for p in value]
    else:
        parts = [p.strip() for p in str(value or "").split(",")]
    parts = [p for p in parts if p]
    unknown = [p for p in parts if p not in WEIGHT_DECAY_KINDS]
    if unknown:
        raise UserError(f"--weight-decay-exclude {value!r}: unknown kind {unknown[0]!r}; use a comma-separated "
                        f"subset of {', '.join(WEIGHT_DECAY_KINDS)}, e.g. --weight-decay-exclude norms,embeddings")
    return tuple(k for k in WEIGHT_DECAY_KINDS if k in parts)


@dataclass(frozen=True)
class TrainConfig(RunOptions):
    output_dir: str = redefault(RunOptions, "output_dir", "runs/dapo_hybrid")
    # -- steps and batches ---------------------------------------------------------------
    batch_size: int = opt(4, "Prompts per step; each is sampled --group-size times.", STEPS)
    group_size: int = opt(2, "Completions per prompt; advantages are z-scored within each group.", STEPS)
    max_steps: int = opt(100, "Last optimisation step (counted across --resume), supervised warm-up included.", STEPS)
    sft_steps: int = opt(0, "Supervised warm-up: steps 1..N train on prompt -> answer+EOS (cross-entropy) before RL starts.", STEPS)
    sft_batch_size: int = opt(0, "Examples per supervised step (0: the whole training split, full batch).", STEPS)
    seed_per_prompt: bool = opt(False, "Seed each prompt's group from (seed, step, its place in the step's batch) and sample group by group: completions no longer depend on how many processes share the batch (torchrun), at one generate call per prompt.", SAMPLING)
    micro_batch_size: int = opt(0, "Completions per forward/backward chunk (0: a process's whole batch at once). The update accumulates the chunks' gradients exactly (the same update as the full batch) at the cost of one extra forward without gradients; generation and the KL reference run in chunks of this many rows too, so sampled completions differ from an unchunked run's (the random stream is drawn chunk by chunk; greedy ones are the same) and the option changes a run's trajectory. Must divide the completions a process holds (batch size x group size / processes).", STEPS)
    sft_eos_loss: bool = opt(True, "Include the EOS token in the supervised loss (mean over answer+EOS tokens); --no-sft-eos-loss trains on the answer tokens only.", STEPS)
    # -- optimizer -----------------------------------------------------------------------
    learning_rate: float = opt(1e-5, "AdamW learning rate.", OPTIMIZER)
    weight_decay: float = opt(0.0, "AdamW weight decay.", OPTIMIZER)
    weight_decay_exclude: str = opt("", "Parameter kinds that get no weight decay, comma-separated from biases, norms, embeddings (e.g. 'norms,embeddings'; a tied output layer counts as the embedding); empty: every parameter is decayed.", OPTIMIZER)
    adam_betas: str = opt("0.9,0.999", "AdamW betas as B1,B2 (grokking runs use 0.9,0.98).", OPTIMIZER)
    max_grad_norm: float = opt(1.0, "Clip the gradient L2 norm to this value; 0 or inf: no clipping (the log records the norm before clipping either way).", OPTIMIZER)
    skip_nonfinite: bool = opt(False, "Skip a step whose gradient norm is not finite (no optimizer update; the step is logged with null loss and grad_norm) instead of stopping the run with a checkpoint of the last good step.", OPTIMIZER)
    # -- the DAPO objective --------------------------------------------------------------
    clip_ratio: float = opt(0.2, "Policy-ratio clip range epsilon.", OBJECTIVE)
    clip_ratio_high: float | None = opt(None, "Upper clip epsilon, 1+eps_high (DAPO's clip-higher: 0.28); default: --clip-ratio.", OBJECTIVE)
    updates_per_batch: int = opt(1, "Optimizer steps on each sampled batch with its old log-probs kept (PPO-style mu); >1 makes the ratio and clip_ratio move.", OBJECTIVE)
    dynamic_sampling: bool = opt(False, "Drop groups whose mixed rewards have zero variance and sample more prompts until the batch is full (DAPO).", OBJECTIVE)
    max_sampling_rounds: int = opt(3, "Cap on generation rounds per step with --dynamic-sampling; then the batch is topped up with dropped groups.", OBJECTIVE)
    overlong_buffer: int = opt(0, "L_cache of DAPO's overlong shaping: axis overlong_penalty falls from 0 at max_new_tokens - L_cache to -1 at max_new_tokens (0: off).", OBJECTIVE)
    mask_truncated: bool = opt(False, "Give completions that hit --max-new-tokens without EOS zero weight in the loss (DAPO's overlong filtering).", OBJECTIVE)
    clip_advantage: float = opt(5.0, "Advantages are clipped to +-this value.", OBJECTIVE)
    kl_coef: float = opt(0.1, "Weight of the KL penalty to the frozen reference model (0 disables it).", OBJECTIVE)
    kl_target: float | None = opt(None, "Adapt the KL weight towards this KL value (off when unset).", OBJECTIVE)
    kl_horizon: float = opt(1000.0, "Adaptive-KL horizon: larger moves the KL weight more slowly.", OBJECTIVE)
    entropy_coef: float = opt(0.0, "Weight of an entropy bonus on completion tokens (0: none, as in DAPO); keeps small models exploring.", OBJECTIVE)
    # -- LoRA adapters -------------------------------------------------------------------
    lora: bool = opt(False, "Train LoRA adapters (peft, the [lora] extra) instead of every weight; the KL reference is the base model with the adapters off, and checkpoints hold the adapter (merge one with `rg-tracer merge`).", LORA)
    lora_r: int = opt(8, "LoRA rank r of each adapter.", LORA)
    lora_alpha: float = opt(16.0, "LoRA scaling alpha: an adapter's update is scaled by alpha / r.", LORA)
    lora_dropout: float = opt(0.0, "Dropout on the adapters' input in the training forward (with --updates-per-batch > 1 the old log-probs come from the first update's forward, so they see it too); sampling, the KL reference and evaluation stay deterministic.", LORA)
    lora_target_modules: str = opt("", "Comma-separated module names to adapt (peft's matching: a name's last component, e.g. q_proj,v_proj). Default: every linear projection of the attention and MLP blocks (peft's 'all-linear', the output layer left out).", LORA)
    # -- grokking diagnostics ------------------------------------------------------------
    grokfast_alpha: float = opt(0.98, "EMA decay of the slow gradient (GrokFast); also used for the slow/fast ratio diagnostic.", GROKKING)
    grokfast_lambda: float = opt(0.0, "Add lambda x slow gradient to each gradient before clipping (GrokFast; 0: off, paper: 2-5).", GROKKING)
    diag_every: int = opt(10, "Log grokking diagnostics (weight norms, slow/fast gradient ratio) every N steps (0: off, saves one gradient-sized buffer).", GROKKING)
    # -- checkpoints and resume ----------------------------------------------------------
    save_every: int = opt(0, "Write a checkpoint every N steps (0: only at the end).", RUN_DIR)
    keep_checkpoints: int = opt(0, "Keep only the newest N checkpoints, deleting the oldest after each successful save (0: keep all).", RUN_DIR)
    resume: bool = opt(False, "Continue the run in --output-dir from its latest checkpoint; options that change the trajectory must equal the checkpoint's.", RUN_DIR)
    resume_with_changes: bool = opt(False, "With --resume: continue even though options that change the trajectory (seed, batch size, learning rate, ...) differ from the checkpoint's; the new values apply from the next step.", RUN_DIR)

    SECTIONS: ClassVar[tuple[str, ...]] = (INPUTS, STEPS, OPTIMIZER, OBJECTIVE, LORA, SAMPLING, EVALUATION,
                                           GROKKING, RUN_DIR, MACHINE)
    RESUME_MAY_DIFFER: ClassVar[tuple[str, ...]] = RunOptions.RESUME_MAY_DIFFER + (
        "max_steps", "save_every", "diag_every", "resume", "resume_with_changes", "keep_checkpoints", "skip_nonfinite",
    )
    # The restored AdamW keeps the checkpoint's betas and parameter groups: another value
    # would be ignored (betas) or could not load (groups).
    # LoRA's shape fixes which parameters AdamW holds state for.
    RESUME_FIXED: ClassVar[tuple[str, ...]] = ("adam_betas", "weight_decay_exclude", "lora", "lora_r",
                                               "lora_target_modules", "pure_dtype")
    MAY_BE_INFINITE: ClassVar[tuple[str, ...]] = ("max_grad_norm",)  # inf: no clipping
    LIST_OPTIONS: ClassVar[tuple[str, ...]] = ("adam_betas", "weight_decay_exclude", "lora_target_modules")

    def rules(self) -> list[tuple[bool, str]]:
        return super().rules() + [
            (self.learning_rate <= MAX_LEARNING_RATE,
             f"--learning-rate {self.learning_rate} must be <= {MAX_LEARNING_RATE}: AdamW moves every weight by "
             "about the learning rate each step, so a larger one wrecks the model in a step (typical: 1e-5 to 1e-3)"),
            (self.learning_rate * self.weight_decay <= 1,
             f"--weight-decay {self.weight_decay} times --learning-rate {self.learning_rate} must be <= 1: AdamW "
             "shrinks every weight by that fraction each step, so above 1 it flips their signs"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size} must be >= 1"),
            (self.group_size >= 2, f"--group-size {self.group_size} must be >= 2: advantages are z-scored within a group, so a group of one always has advantage 0"),
            (self.sft_steps >= 0 and self.sft_batch_size >= 0, "--sft-steps and --sft-batch-size must be >= 0"),
            (self.max_steps >= 1, f"--max-steps {self.max_steps} must be >= 1"),
            (self.learning_rate > 0, f"--learning-rate {self.learning_rate} must be > 0"),
            (self.weight_decay >= 0, f"--weight-decay {self.weight_decay} must be >= 0"),
            (0 < self.clip_ratio < 1, f"--clip-ratio {self.clip_ratio} must be in (0, 1), e.g. 0.2"),
            (self.clip_ratio_high is None or self.clip_ratio_high > 0, f"--clip-ratio-high {self.clip_ratio_high} must be > 0, e.g. 0.28"),
            (self.updates_per_batch >= 1, f"--updates-per-batch {self.updates_per_batch} must be >= 1"),
            (self.max_sampling_rounds >= 1, f"--max-sampling-rounds {self.max_sampling_rounds} must be >= 1"),
            (0 <= self.overlong_buffer < self.max_new_tokens, f"--overlong-buffer {self.overlong_buffer} must be in [0, --max-new-tokens {self.max_new_tokens})"),
            (self.clip_advantage > 0, f"--clip-advantage {self.clip_advantage} must be > 0"),
            (self.kl_coef >= 0, f"--kl-coef {self.kl_coef} must be >= 0"),
            (self.kl_target is None or self.kl_target > 0, f"--kl-target {self.kl_target} must be > 0 (omit it for a fixed KL weight)"),
            (self.entropy_coef >= 0, f"--entropy-coef {self.entropy_coef} must be >= 0"),
            (self.kl_horizon > 0, f"--kl-horizon {self.kl_horizon} must be > 0"),
            (self.max_grad_norm >= 0, f"--max-grad-norm {self.max_grad_norm} must be >= 0 (0 or inf: no clipping), e.g. 1.0"),
            (self.temperature > 0, f"--temperature {self.temperature} must be > 0 (greedy decoding is used for evaluation)"),
            (0 < self.grokfast_alpha < 1, f"--grokfast-alpha {self.grokfast_alpha} must be in (0, 1), e.g. 0.98"),
            (self.grokfast_lambda >= 0, f"--grokfast-lambda {self.grokfast_lambda} must be >= 0"),
            (self.diag_every >= 0, f"--diag-every {self.diag_every} must be >= 0"),
            (self.save_every >= 0, f"--save-every {self.save_every} must be >= 0"),
            (self.keep_checkpoints >= 0, f"--keep-checkpoints {self.keep_checkpoints} must be >= 0 (0: keep all)"),
            (self.micro_batch_size >= 0, f"--micro-batch-size {self.micro_batch_size} must be >= 0 (0: the whole batch)"),
            (not self.micro_batch_size or (self.batch_size * self.group_size) % self.micro_batch_size == 0,
             f"--micro-batch-size {self.micro_batch_size} does not divide the {self.batch_size * self.group_size} "
             f"completions of a step (--batch-size {self.batch_size} x --group-size {self.group_size}); use a divisor "
             f"such as {largest_divisor(self.batch_size * self.group_size, self.micro_batch_size)}"),
            (self.dtype != "float16",
             "--dtype float16: training in float16 needs a loss scaler, which rg-tracer has not (small fp16 "
             "gradients underflow to 0); use --dtype bfloat16 (the same memory, float32's range) or float32"),
            (self.lora_r >= 1, f"--lora-r {self.lora_r} must be >= 1 (the adapters' rank, e.g. 8)"),
            (self.lora_alpha > 0, f"--lora-alpha {self.lora_alpha} must be > 0 (e.g. 16)"),
            (0 <= self.lora_dropout < 1, f"--lora-dropout {self.lora_dropout} must be in [0, 1)"),
            (self.lora or not self.lora_target_modules,
             "--lora-target-modules only applies with --lora; add --lora"),
            (not (self.resume and self.overwrite), "--resume and --overwrite contradict each other; pass one"),
            (self.resume or not self.resume_with_changes, "--resume-with-changes only applies with --resume; add --resume"),
        ]

    def __post_init__(self) -> None:
        super().__post_init__()  # the rules, every float option finite among them
        # Normalise the two list-valued options to their canonical strings (YAML may give lists).
        object.__setattr__(self, "adam_betas", format_floats(parse_betas(self.adam_betas)))
        object.__setattr__(self, "weight_decay_exclude", ",".join(_parse_exclude(self.weight_decay_exclude)))
        object.__setattr__(self, "lora_target_modules", ",".join(_parse_names(self.lora_target_modules)))

    def evaluates_at(self, step: int, last: bool) -> bool:
        """The shared rule, plus the end of the supervised warm-up."""
        return super().evaluates_at(step, last) or (self.eval_every > 0 and step == self.sft_steps)

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """``--lora-target-modules`` as a tuple of names (empty: peft's 'all-linear')."""
        return _parse_names(self.lora_target_modules)

    @property
    def betas(self) -> tuple[float, float]:
        """``--adam-betas`` as the tuple AdamW takes."""
        return parse_betas(self.adam_betas)

    @property
    def no_decay(self) -> tuple[str, ...]:
        """``--weight-decay-exclude`` as a tuple of kinds (biases, norms, embeddings)."""
        return _parse_exclude(self.weight_decay_exclude)

    @property
    def clips_gradients(self) -> bool:
        """False for ``--max-grad-norm`` 0 or inf: gradients are measured, never scaled."""
        return 0 < self.max_grad_norm < math.inf

    @property
    def eps_high(self) -> float:
        return self.clip_ratio if self.clip_ratio_high is None else self.clip_ratio_high
