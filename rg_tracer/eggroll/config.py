"""EGGROLL search options: one frozen dataclass, each field's help written once.

``rg-tracer eggroll`` builds its click options from these fields
(:func:`rg_tracer.cli_options.options_from`); a YAML file of the same keys is read by
:meth:`EggrollConfig.from_file` (see ``configs/eggroll/``). Cross-field rules live in
``__post_init__`` and say the value, the rule and the fix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from rg_tracer.config import opt
from rg_tracer.eggroll.shaping import SHAPINGS
from rg_tracer.errors import UserError

__all__ = ["EggrollConfig", "check_population"]


def check_population(size: int, rank: int, sigma: float, antithetic: bool) -> None:
    """The rules every population obeys; raises :class:`UserError` naming the fix."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise UserError(f"--population {size!r} must be an integer >= 2 (an update compares members)")
    if antithetic and size % 2:
        raise UserError(
            f"--population {size} is odd, but antithetic sampling pairs each member (+σ) with its "
            f"mirror (-σ); use an even number such as {size + 1}, or pass --no-antithetic"
        )
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UserError(f"--rank {rank!r} must be an integer >= 1, e.g. 1")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise UserError(f"--sigma {sigma!r} must be a finite number > 0 (the perturbation scale, e.g. 0.05)")


@dataclass(frozen=True)
class EggrollConfig:
    model: str = opt(None, "Hub name or local directory of a causal LM (build one with `rg-tracer init-model`). Required.")
    dataset: str = opt(None, "Training JSONL with 'prompt' and 'answer' per line. Required.")
    eval_dataset: str | None = opt(None, "Held-out JSONL for --eval-every (default: <dataset stem>_test.jsonl beside it, if present).")
    output_dir: str = opt("runs/eggroll", "Run directory: train.jsonl and model/ go here.")
    scorer: str = opt("arithmetic", "Built-in scorer name or 'package.module:Class'.")
    reward_mixer: str = opt("configs/reward_mixer.yaml", "YAML/JSON of reward-axis weights; the mixed scalar, averaged over a member's prompts, is its fitness.")
    population: int = opt(32, "Members per generation (N); even with antithetic sampling.")
    rank: int = opt(1, "Rank r of each member's perturbation A Bᵀ (at most min(m, n) of every weight).")
    sigma: float = opt(0.05, "Perturbation scale σ: a member sees W + σ/√r · A Bᵀ.")
    lr: float = opt(10.0, "Step size: W += lr · mean_i(f_i · σ/√r · A_i B_iᵀ) with shaped fitness f_i; a weight moves about lr·σ·std(f)/√N per generation (docs/eggroll.md).")
    generations: int = opt(100, "Number of generations (ES updates).")
    prompts: int = opt(8, "Prompts per generation; every member answers the same prompts.")
    member_batch: int = opt(0, "Members per forward pass (0: the whole population in one forward); lower it to save memory.")
    antithetic: bool = opt(True, "Mirrored sampling: members 2k and 2k+1 share a perturbation with opposite signs.")
    shaping: str = opt("centered_rank", "Fitness shaping before the update: none, zscore or centered_rank.")
    max_new_tokens: int = opt(8, "Maximum completion length in tokens.")
    temperature: float = opt(0.0, "Sampling temperature for member completions (0: greedy, so fitness depends only on the weights).")
    eval_every: int = opt(0, "Evaluate the unperturbed model on the held-out split every N generations and at the end (0: only at the end).")
    eval_samples: int = opt(64, "Prompts per split and evaluation, greedy decoding (0: all).")
    seed: int = opt(42, "Base seed: prompt order and every perturbation derive from it.")
    overwrite: bool = opt(False, "Delete the run already in --output-dir (train.jsonl, model/) and start afresh.")
    device: str = opt("auto", "torch device: auto, cpu, cuda, cuda:1, mps.")
    threads: int | None = opt(None, "torch CPU threads (1 is fastest for tiny models on few cores).")
    trust_remote_code: bool = opt(False, "Allow model code from the hub to run (only for models you trust).")
    progress: bool = opt(True, "Show a progress bar.")

    def __post_init__(self) -> None:
        rules = [
            (bool(self.model), "--model is required: a hub name or a directory from `rg-tracer init-model`"),
            (bool(self.dataset), "--dataset is required: a JSONL file with 'prompt' and 'answer' per line"),
            (self.generations >= 1, f"--generations {self.generations} must be >= 1"),
            (self.prompts >= 1, f"--prompts {self.prompts} must be >= 1"),
            (self.member_batch >= 0, f"--member-batch {self.member_batch} must be >= 0 (0: whole population)"),
            (self.shaping in SHAPINGS, f"--shaping {self.shaping!r} is not one of {', '.join(SHAPINGS)}"),
            (self.max_new_tokens >= 1, f"--max-new-tokens {self.max_new_tokens} must be >= 1"),
            (self.temperature >= 0, f"--temperature {self.temperature} must be >= 0 (0: greedy)"),
            (self.eval_every >= 0, f"--eval-every {self.eval_every} must be >= 0"),
            (self.eval_samples >= 0, f"--eval-samples {self.eval_samples} must be >= 0"),
            (self.threads is None or self.threads >= 1, f"--threads {self.threads} must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr {self.lr} must be a finite number > 0"),
        ]
        for ok, message in rules:
            if not ok:
                raise UserError(message)
        check_population(self.population, self.rank, self.sigma, self.antithetic)
        group = 2 if self.antithetic else 1
        if self.member_batch and (self.member_batch % group or self.population % self.member_batch):
            fits = [d for d in range(group, self.population + 1, group)
                    if self.population % d == 0 and d <= self.member_batch] or [self.population]
            raise UserError(
                f"--member-batch {self.member_batch} must divide --population {self.population}"
                + (" and be even (a mirrored pair shares a forward)" if group == 2 else "")
                + f"; use e.g. --member-batch {fits[-1]}"
            )

    @property
    def members_per_forward(self) -> int:
        return self.member_batch or self.population

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str, **overrides) -> "EggrollConfig":
        """Options from a YAML file (field names as keys), then ``overrides`` on top."""
        from rg_tracer.cli_options import config_from_file

        return config_from_file(cls, path, **overrides)
