"""Training options: one frozen dataclass, each field's help written once.

``rg-tracer train`` and ``scripts/train_dapo_hybrid.py`` build their click options
from these fields (``rg_tracer.cli_options``), so a new option is added here only.
Cross-field rules live in ``__post_init__`` and say the value, the rule and the fix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from rg_tracer.errors import UserError

__all__ = ["TrainConfig"]


def opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


WEIGHT_DECAY_KINDS = ("biases", "norms", "embeddings")


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
class TrainConfig:
    model: str = opt(None, "Hub name or local directory of a causal LM (build one with `rg-tracer init-model`). Required.")
    dataset: str = opt(None, "Training JSONL with 'prompt' and 'answer' per line (or a directory holding train.jsonl). Required.")
    eval_dataset: str | None = opt(None, "Held-out JSONL for --eval-every (default: <dataset stem>_test.jsonl beside it, if present).")
    output_dir: str = opt("runs/dapo_hybrid", "Run directory: train.jsonl and checkpoints/ go here.")
    scorer: str = opt("arithmetic", "Built-in scorer name or 'package.module:Class'.")
    reward_mixer: str = opt("configs/reward_mixer.yaml", "YAML/JSON of reward-axis weights used to mix rewards into the training scalar.")
    batch_size: int = opt(4, "Prompts per step; each is sampled --group-size times.")
    group_size: int = opt(2, "Completions per prompt; advantages are z-scored within each group.")
    max_steps: int = opt(100, "Last optimisation step (counted across --resume), supervised warm-up included.")
    sft_steps: int = opt(0, "Supervised warm-up: steps 1..N train on prompt -> answer+EOS (cross-entropy) before RL starts.")
    sft_batch_size: int = opt(0, "Examples per supervised step (0: the whole training split, full batch).")
    sft_eos_loss: bool = opt(True, "Include the EOS token in the supervised loss (mean over answer+EOS tokens); --no-sft-eos-loss trains on the answer tokens only.")
    learning_rate: float = opt(1e-5, "AdamW learning rate.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    weight_decay_exclude: str = opt("", "Parameter kinds that get no weight decay, comma-separated from biases, norms, embeddings (e.g. 'norms,embeddings'; a tied output layer counts as the embedding); empty: every parameter is decayed.")
    adam_betas: str = opt("0.9,0.999", "AdamW betas as B1,B2 (grokking runs use 0.9,0.98).")
    clip_ratio: float = opt(0.2, "Policy-ratio clip range epsilon.")
    clip_ratio_high: float | None = opt(None, "Upper clip epsilon, 1+eps_high (DAPO's clip-higher: 0.28); default: --clip-ratio.")
    updates_per_batch: int = opt(1, "Optimizer steps on each sampled batch with its old log-probs kept (PPO-style mu); >1 makes the ratio and clip_ratio move.")
    dynamic_sampling: bool = opt(False, "Drop groups whose mixed rewards have zero variance and sample more prompts until the batch is full (DAPO).")
    max_sampling_rounds: int = opt(3, "Cap on generation rounds per step with --dynamic-sampling; then the batch is topped up with dropped groups.")
    overlong_buffer: int = opt(0, "L_cache of DAPO's overlong shaping: axis overlong_penalty falls from 0 at max_new_tokens - L_cache to -1 at max_new_tokens (0: off).")
    mask_truncated: bool = opt(False, "Give completions that hit --max-new-tokens without EOS zero weight in the loss (DAPO's overlong filtering).")
    clip_advantage: float = opt(5.0, "Advantages are clipped to +-this value.")
    kl_coef: float = opt(0.1, "Weight of the KL penalty to the frozen reference model (0 disables it).")
    kl_target: float | None = opt(None, "Adapt the KL weight towards this KL value (off when unset).")
    kl_horizon: float = opt(1000.0, "Adaptive-KL horizon: larger moves the KL weight more slowly.")
    entropy_coef: float = opt(0.0, "Weight of an entropy bonus on completion tokens (0: none, as in DAPO); keeps small models exploring.")
    max_grad_norm: float = opt(1.0, "Clip the gradient L2 norm to this value; 0 or inf: no clipping (the log records the norm before clipping either way).")
    max_new_tokens: int = opt(32, "Maximum completion length in tokens.")
    temperature: float = opt(1.0, "Sampling temperature for training rollouts.")
    lean_sampler: bool = opt(True, "Sample GPT-2/Llama/Qwen2 models with rg-tracer's KV-cached loop (generate's tokens, faster); --no-lean-sampler calls model.generate, e.g. for a model with a patched forward.")
    grokfast_alpha: float = opt(0.98, "EMA decay of the slow gradient (GrokFast); also used for the slow/fast ratio diagnostic.")
    grokfast_lambda: float = opt(0.0, "Add lambda x slow gradient to each gradient before clipping (GrokFast; 0: off, paper: 2-5).")
    diag_every: int = opt(10, "Log grokking diagnostics (weight norms, slow/fast gradient ratio) every N steps (0: off, saves one gradient-sized buffer).")
    eval_every: int = opt(100, "Evaluate on the held-out split (and a train sample) before the first step, every N steps, at the end of --sft-steps and at the end (0: never).")
    eval_samples: int = opt(64, "Prompts per split and evaluation, greedy decoding (0: all).")
    save_every: int = opt(0, "Write a checkpoint every N steps (0: only at the end).")
    seed: int = opt(42, "Base seed: prompt order and each step's sampling seed derive from it.")
    resume: bool = opt(False, "Continue the run in --output-dir from its latest checkpoint.")
    overwrite: bool = opt(False, "Delete the run already in --output-dir (train.jsonl, checkpoints/) and start afresh.")
    device: str = opt("auto", "torch device: auto, cpu, cuda, cuda:1, mps.")
    threads: int | None = opt(None, "torch CPU threads (1 is fastest for tiny models on few cores).")
    trust_remote_code: bool = opt(False, "Allow model code from the hub to run (only for models you trust).")
    progress: bool = opt(True, "Show a progress bar.")

    def __post_init__(self) -> None:
        rules = [
            (bool(self.model), "--model is required: a hub name or a directory from `rg-tracer init-model`"),
            (bool(self.dataset), "--dataset is required: a JSONL file with 'prompt' and 'answer' per line"),
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
            (self.max_new_tokens >= 1, f"--max-new-tokens {self.max_new_tokens} must be >= 1"),
            (self.temperature > 0, f"--temperature {self.temperature} must be > 0 (greedy decoding is used for evaluation)"),
            (0 < self.grokfast_alpha < 1, f"--grokfast-alpha {self.grokfast_alpha} must be in (0, 1), e.g. 0.98"),
            (self.grokfast_lambda >= 0, f"--grokfast-lambda {self.grokfast_lambda} must be >= 0"),
            (self.diag_every >= 0, f"--diag-every {self.diag_every} must be >= 0"),
            (self.eval_every >= 0, f"--eval-every {self.eval_every} must be >= 0"),
            (self.eval_samples >= 0, f"--eval-samples {self.eval_samples} must be >= 0"),
            (self.save_every >= 0, f"--save-every {self.save_every} must be >= 0"),
            (self.threads is None or self.threads >= 1, f"--threads {self.threads} must be >= 1"),
            (not (self.resume and self.overwrite), "--resume and --overwrite contradict each other; pass one"),
        ]
        for ok, message in rules:
            if not ok:
                raise UserError(message)
        for name in ("learning_rate", "clip_ratio", "kl_coef", "temperature"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"--{name.replace('_', '-')} must be finite")
        # Normalise the two list-valued options to their canonical strings (YAML may give lists).
        object.__setattr__(self, "adam_betas", format_floats(parse_betas(self.adam_betas)))
        object.__setattr__(self, "weight_decay_exclude", ",".join(_parse_exclude(self.weight_decay_exclude)))

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str, **overrides) -> "TrainConfig":
        """Options from a YAML file (field names as keys), then ``overrides`` on top."""
        from rg_tracer.cli_options import config_from_file

        return config_from_file(cls, path, **overrides)
