"""``rg-tracer eggroll`` options: :class:`EggrollConfig`, the shared
:class:`~rg_tracer.options.RunOptions` plus the population and its update.

``rg-tracer eggroll`` builds its click options from these fields; a YAML file of the same
keys is read by :meth:`EggrollConfig.from_file` (see ``configs/eggroll/``). Rules live in
:meth:`EggrollConfig.rules` and say the value, the rule and the fix. Defaults that differ
from ``train`` on purpose: greedy completions (``--temperature 0``: a member's fitness
depends only on its weights), short completions and the output directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from rg_tracer.eggroll.shaping import SHAPINGS
from rg_tracer.errors import UserError
from rg_tracer.options import EVALUATION, INPUTS, MACHINE, RUN_DIR, SAMPLING, RunOptions, opt, redefault

__all__ = ["EggrollConfig", "check_population"]

POPULATION = "Population and update"
#: The entries of σ/√r · A Bᵀ have standard deviation σ, and weights are of order 0.01 to 1:
#: above this a member's weights are mostly noise.
MAX_SIGMA = 1.0


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
class EggrollConfig(RunOptions):
    output_dir: str = redefault(RunOptions, "output_dir", "runs/eggroll")
    max_new_tokens: int = redefault(RunOptions, "max_new_tokens", 8)
    temperature: float = redefault(RunOptions, "temperature", 0.0)
    # -- the population and its update ---------------------------------------------------
    population: int = opt(32, "Members per generation (N); even with antithetic sampling.", POPULATION)
    rank: int = opt(1, "Rank r of each member's perturbation A Bᵀ (at most min(m, n) of every weight).", POPULATION)
    sigma: float = opt(0.05, "Perturbation scale σ: a member sees W + σ/√r · A Bᵀ.", POPULATION)
    lr: float = opt(10.0, "Step size: W += lr · mean_i(f_i · σ/√r · A_i B_iᵀ) with shaped fitness f_i; a weight moves about lr·σ·std(f)/√N per generation (docs/eggroll.md).", POPULATION)
    generations: int = opt(100, "Number of generations (ES updates).", POPULATION)
    prompts: int = opt(8, "Prompts per generation; every member answers the same prompts.", POPULATION)
    member_batch: int = opt(0, "Members per forward pass (0: the whole population in one forward); lower it to save memory.", POPULATION)
    antithetic: bool = opt(True, "Mirrored sampling: members 2k and 2k+1 share a perturbation with opposite signs.", POPULATION)
    shaping: str = opt("centered_rank", "Fitness shaping before the update: none, zscore or centered_rank.", POPULATION)

    SECTIONS: ClassVar[tuple[str, ...]] = (INPUTS, POPULATION, SAMPLING, EVALUATION, RUN_DIR, MACHINE)

    def rules(self) -> list[tuple[bool, str]]:
        return super().rules() + [
            (self.generations >= 1, f"--generations {self.generations} must be >= 1"),
            (self.prompts >= 1, f"--prompts {self.prompts} must be >= 1"),
            (self.member_batch >= 0, f"--member-batch {self.member_batch} must be >= 0 (0: whole population)"),
            (self.shaping in SHAPINGS, f"--shaping {self.shaping!r} is not one of {', '.join(SHAPINGS)}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr {self.lr} must be a finite number > 0"),
            (self.sigma <= MAX_SIGMA,
             f"--sigma {self.sigma} must be <= {MAX_SIGMA}: each perturbed weight moves by about sigma, and "
             "weights are of order 0.01 to 1, so a larger sigma drowns them in noise (typical: 0.001 to 0.1)"),
        ]

    def __post_init__(self) -> None:
        super().__post_init__()
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
