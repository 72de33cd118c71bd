"""The EGGROLL search loop: perturb -> generate -> score -> mix -> shape -> update -> log -> eval.

Run it with ``rg-tracer eggroll --model M --dataset D --output-dir runs/es1``. Each
generation ``g`` (logged as step ``g``):

1. ``P`` prompts are taken from a seeded per-epoch permutation of the dataset.
2. The ``N`` members (:class:`~rg_tracer.eggroll.lowrank.Population`, seeded by
   ``(seed, g)``) answer them in member-batched forwards (:mod:`.members`).
3. Fitness per member = mean mixed reward over its prompts; shaped (:mod:`.shaping`).
4. ``W += lr · (1/N) Σ f_i · s_i (σ/√r) A_i B_iᵀ`` (:func:`~.lowrank.es_update`).
5. A ``step`` record in the ``rg-tracer/1`` schema: the ``N·P`` reward vectors
   prompt-major (``completion_id = "<prompt_id>#<member>"``, ``meta.member``), ``rl``
   with fitness statistics, and an ``es`` object with every member's raw and shaped
   fitness. ``rg-tracer analyze`` reads it like an RL run (docs/eggroll.md).

Unlike ``rg-tracer train`` there is no ``--resume``: a search is cheap to rerun and
its state is the weights alone (saved to ``OUTPUT_DIR/model`` at the end).
"""

from __future__ import annotations

import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from rg_tracer.scorers.mapping import FeedbackMappingConfig
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.runtime.evaluation import evaluate_splits
from rg_tracer.runtime.log_writer import JsonlLogger
from rg_tracer.data import Dataset, load_dataset, resolve_eval_path
from rg_tracer.eggroll.config import EggrollConfig
from rg_tracer.eggroll.lowrank import Layer, Population, check_rank, es_update, find_layers, mix_seed
from rg_tracer.eggroll.members import MemberEval, evaluate_members
from rg_tracer.eggroll.shaping import shape_fitness
from rg_tracer.errors import UserError
from rg_tracer.models import load_model, resolve_device
from rg_tracer.reward_mixer import check_overlap, load_reward_mixer
from rg_tracer.scorers import load_scorer
from rg_tracer.schema import LOG_NAME

__all__ = ["EggrollRun", "EggrollSearch", "es_step", "prepare", "search"]

MODEL_DIR = "model"


def es_step(layers: list[Layer], population: Population, evaluate: Callable[[Population], Any], *,
            lr: float, shaping: str) -> tuple[np.ndarray, np.ndarray, float]:
    """One ES generation on any fitness: ``evaluate(population) -> (N,)``, shape, update.

    Returns raw fitness, shaped fitness and the update's L2 norm. ``evaluate`` runs the
    population's forwards itself (under :func:`~.lowrank.perturbed`).
    """
    raw = np.asarray(torch.as_tensor(evaluate(population), dtype=torch.float64).cpu(), dtype=np.float64)
    shaped = shape_fitness(raw, shaping)
    return raw, shaped, es_update(layers, population, shaped, lr)


@dataclass
class EggrollRun:
    """Everything a search needs, loaded and checked before anything is written."""

    config: EggrollConfig
    train: Dataset
    eval: Dataset | None
    scorer: Any
    mapping: FeedbackMappingConfig
    mixer: Any
    model: Any
    tokenizer: Any
    layers: list[Layer]
    run_dir: Path
    log_path: Path


def prepare(config: EggrollConfig) -> EggrollRun:
    """Load and check every input; raise :class:`UserError` before touching the run directory."""
    run_dir = Path(config.output_dir)
    log_path = run_dir / LOG_NAME
    if (log_path.exists() or (run_dir / MODEL_DIR).exists()) and not config.overwrite:
        raise UserError(f"{run_dir} already holds a run; pass --overwrite to replace it or choose another --output-dir")
    if not Path(config.reward_mixer).is_file():
        raise UserError(f"--reward-mixer {config.reward_mixer}: no such file (see configs/reward_mixer.yaml for the format)")
    mixer = load_reward_mixer(config.reward_mixer)
    train = load_dataset(config.dataset)
    eval_path = resolve_eval_path(config.dataset, config.eval_dataset)
    eval_set = load_dataset(eval_path) if eval_path else None
    scorer = load_scorer(config.scorer)
    mapping = getattr(scorer, "feedback_mapping", None) or FeedbackMappingConfig()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code)
    model.to(device).eval().requires_grad_(False)
    layers = find_layers(model)
    check_rank(layers, config.rank)
    if config.overwrite:
        log_path.unlink(missing_ok=True)
        shutil.rmtree(run_dir / MODEL_DIR, ignore_errors=True)
    return EggrollRun(config, train, eval_set, scorer, mapping, mixer, model, tokenizer, layers, run_dir, log_path)


class EggrollSearch:
    def __init__(self, run: EggrollRun) -> None:
        self.run, self.config = run, run.config
        self.policy = HFPolicyAdapter(run.model, run.tokenizer, lean_sampler=run.config.lean_sampler)
        self.logger = JsonlLogger(run.log_path)
        self.generation = 0
        self._stop_requested = False
        self._mixer_checked = False

    def _prompts(self, generation: int) -> list:
        """Prompts of ``generation``: consecutive slices of a per-epoch seeded permutation."""
        examples, size = self.run.train.examples, self.config.prompts
        picked = []
        for k in range((generation - 1) * size, generation * size):
            epoch, offset = divmod(k, len(examples))
            order = list(range(len(examples)))
            random.Random(mix_seed(self.config.seed, epoch, 1)).shuffle(order)
            picked.append(examples[order[offset]])
        return picked

    def step(self, generation: int) -> dict:
        cfg, run = self.config, self.run
        population = Population(cfg.population, cfg.rank, cfg.sigma, cfg.seed, generation, cfg.antithetic)
        t0 = time.perf_counter()
        ev = evaluate_members(self.policy, run.layers, population, self._prompts(generation), scorer=run.scorer,
                              mapping=run.mapping, mixer=run.mixer, member_batch=cfg.member_batch,
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
        if not self._mixer_checked:  # the trainer's refusal, before the first line is written
            check_overlap(run.mixer, set(ev.feedbacks[0].rewards), f"--reward-mixer {cfg.reward_mixer}")
            self._mixer_checked = True
        t1 = time.perf_counter()
        raw, shaped, norm = es_step(run.layers, population, lambda _: ev.fitness, lr=cfg.lr, shaping=cfg.shaping)
        t2 = time.perf_counter()
        record = self._log(generation, ev, raw, shaped, norm, {"generate": t1 - t0, "train": t2 - t1})
        self.generation = generation
        return record

    def _log(self, generation: int, ev: MemberEval, raw: np.ndarray, shaped: np.ndarray, norm: float,
             timing: dict) -> dict:
        cfg = self.config
        order = ev.prompt_major()
        axes: dict[str, list[float]] = {}
        for fb in ev.feedbacks:
            for key, value in fb.rewards.items():
                axes.setdefault(key, []).append(value)
        lengths = np.asarray(ev.completion_tokens, dtype=np.float64)
        mean_fitness = float(raw.mean())
        rl = {
            "loss": -mean_fitness, "policy_loss": -mean_fitness, "kl": None, "clip_ratio": None,
            "lr": cfg.lr, "grad_norm": norm / cfg.lr,
            "reward_mixed_mean": float(ev.mixed.mean()), "reward_mixed_std": float(ev.mixed.std(unbiased=False)),
            "fitness/mean": mean_fitness, "fitness/std": float(raw.std()), "fitness/min": float(raw.min()),
            "fitness/max": float(raw.max()), "fitness/best_member": int(raw.argmax()),
            "es/update_norm": norm, "es/sigma": cfg.sigma, "es/rank": cfg.rank, "es/population": cfg.population,
            **{f"reward_mean/{k}": float(np.mean(v)) for k, v in axes.items()},
            "completion_length_mean": float(lengths.mean()), "truncated_frac": float(np.mean(ev.truncated)),
        }
        p = len(ev.examples)
        generation_rows = [
            {"prompt_id": ev.examples[i % p].id, "completion_id": f"{ev.examples[i % p].id}#{i // p}",
             "prompt_tokens": ev.prompt_tokens[i], "completion_tokens": ev.completion_tokens[i],
             "truncated": ev.truncated[i], "completion": ev.completions[i]}
            for i in order
        ]
        return self.logger.write(
            "step", step=generation, phase="es", rl=rl, gepa=[ev.feedbacks[i].to_dict() for i in order],
            generation=generation_rows, curriculum={}, safety={},
            es={"shaping": cfg.shaping, "member_fitness": raw.tolist(), "member_shaped": shaped.tolist()},
            timing=timing,
        )

    def evaluate(self, generation: int) -> list[dict]:
        """Greedy evaluation on the held-out split and a train sample: one ``eval`` record each."""
        results = evaluate_splits(self.policy, self.run.scorer, self.run.train, self.run.eval,
                                  max_new_tokens=self.config.max_new_tokens, eval_samples=self.config.eval_samples,
                                  train_order_seed=mix_seed(self.config.seed, 0, 2))
        if not self._mixer_checked:  # the baseline eval may be the first record: refuse before it
            check_overlap(self.run.mixer, set(results[0][2]), f"--reward-mixer {self.config.reward_mixer}")
            self._mixer_checked = True
        return [self.logger.write("eval", step=generation, split=split, n=n, metrics=metrics)
                for split, n, metrics in results]

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        print("\nstopping after this generation (Ctrl-C again to abort)", file=sys.stderr)

    def _stage_run_record(self) -> None:
        from rg_tracer.dapo.setup import versions

        cfg, run = self.config, self.run
        self.logger.stage(
            "run", config={**cfg.to_dict(), "method": "eggroll"}, versions=versions(), seed=cfg.seed,
            model={"name_or_path": cfg.model, "arch": type(run.model).__name__,
                   "parameters": sum(p.numel() for p in run.model.parameters()),
                   "perturbed_layers": len(run.layers),
                   "perturbed_parameters": sum(l.out_features * l.in_features for l in run.layers)},
            dataset={**run.train.describe(), "eval": run.eval.describe() if run.eval else None},
            reward_weights=dict(run.mixer.weights), resumed_from_step=None,
        )

    def fit(self) -> int:
        cfg = self.config
        self._stage_run_record()
        previous = signal.signal(signal.SIGINT, self._request_stop)
        bar = tqdm(total=cfg.generations, desc="eggroll", disable=not cfg.progress, dynamic_ncols=True, file=sys.stderr)
        try:
            if cfg.eval_every:
                self.evaluate(0)  # the baseline every later eval is read against
            for generation in range(1, cfg.generations + 1):
                record = self.step(generation)
                if cfg.evaluates_at(generation, last=generation == cfg.generations or self._stop_requested):
                    self.evaluate(generation)
                bar.update(1)
                bar.set_postfix_str(f"fitness={record['rl']['fitness/mean']:.3f} "
                                    f"max={record['rl']['fitness/max']:.3f}", refresh=False)
                if self._stop_requested:
                    break
            self.run.model.save_pretrained(self.run.run_dir / MODEL_DIR)
            self.run.tokenizer.save_pretrained(self.run.run_dir / MODEL_DIR)
            status = "completed" if self.generation == cfg.generations else "interrupted"
            self.logger.write("end", step=self.generation, status=status)
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous)
            self.logger.close()
        return self.generation


def search(config: EggrollConfig) -> EggrollSearch:
    """Prepare, search for ``config.generations`` and return the search (for paths and state)."""
    searcher = EggrollSearch(prepare(config))
    searcher.fit()
    return searcher
