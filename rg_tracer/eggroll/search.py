"""The EGGROLL search loop: perturb -> generate -> score -> mix -> shape -> update -> log -> eval.

Run it with ``rg-tracer eggroll --model M --dataset D --output-dir runs/es1``. Each
generation ``g`` (logged as step ``g``):

1. ``P`` prompts are taken from a seeded per-epoch permutation of the dataset.
2. The ``N`` members (:class:`~rg_tracer.eggroll.lowrank.Population`, seeded by
   ``(seed, g)``) answer them in member-batched forwards (:mod:`.members`).
3. Fitness per member = mean mixed reward over its prompts; shaped (:mod:`.shaping`).
4. ``W += lr · (1/N) Σ f_i · s_i (σ/√r) A_i B_iᵀ`` (:func:`~.lowrank.es_update`).
5. A ``step`` record (``rg_tracer.schema.step_record``, phase ``es``): the ``N·P`` reward
   vectors prompt-major (``completion_id = "<prompt_id>#<member>"``, ``meta.member``),
   ``rl`` with what means the same in both searches (lr, mixed reward, per-axis means,
   lengths) and an ``es`` object with the fitness statistics and every member's raw and
   shaped fitness. ``rg-tracer analyze`` reads it like an RL run (docs/eggroll.md).

Unlike ``rg-tracer train`` there is no ``--resume``: a search is cheap to rerun and
its state is the weights alone (saved to ``OUTPUT_DIR/model`` at the end).

Under ``torchrun`` every process builds the same population, answers for its contiguous,
pair-aligned range of members, and the ranks' reward vectors are gathered, so every rank
mixes, shapes and updates from the same numbers: the weights never cross the wire and stay
identical (a checksum over ranks after each update stops the search if they do not, e.g.
on GPUs whose seeded noise differs). Rank 0 writes the log and the weights.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rg_tracer.eggroll.config import EggrollConfig
from rg_tracer.eggroll.lowrank import Layer, Population, check_rank, es_update, find_layers
from rg_tracer.eggroll.members import MemberEval, answer, mix
from rg_tracer.eggroll.shaping import shape_fitness
from rg_tracer.errors import UserError
from rg_tracer.models import check_context, load_model, saved_config
from rg_tracer.reward_mixer import check_overlap
from rg_tracer.runtime.evaluation import evaluate_run
from rg_tracer.runtime.log_writer import JsonlLogger
from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
from rg_tracer.runtime.resources import step_resources
from rg_tracer.runtime.precision import FLOAT32, Precision, resolve_precision
from rg_tracer.runtime.run import (
    PromptOrder, RunInputs, StopSignal, choose_threads, claim_run_dir, load_inputs, progress_bar, run_record,
)
from rg_tracer.schema import LOG_NAME, end_record, step_record

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
class EggrollRun(RunInputs):
    """Everything a search needs, loaded and checked before anything is written."""

    config: EggrollConfig
    model: Any
    tokenizer: Any
    layers: list[Layer]
    run_dir: Path
    log_path: Path
    precision: Precision = FLOAT32


def prepare(config: EggrollConfig) -> EggrollRun:
    """Load and check every input; raise :class:`UserError` before touching the run directory."""
    check_context(config)  # before anything is written: prompts that do not fit the model
    run_dir = Path(config.output_dir)
    claim_run_dir(run_dir, (MODEL_DIR,), config.overwrite, resumable=False)
    inputs = load_inputs(config)
    w, pair = inputs.dist.world_size, 2 if config.antithetic else 1
    if config.population % (w * pair):
        raise UserError(f"--population {config.population} does not split among {w} processes in whole "
                        f"{'antithetic pairs' if pair == 2 else 'members'}: use a multiple of {w * pair}")
    precision = resolve_precision(config.dtype, config.pure_dtype, saved_config(config.model, config.trust_remote_code),
                                  config.model, trains=False)
    model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code, dtype=precision.weights)
    model.to(inputs.device).eval().requires_grad_(False)
    choose_threads(config, model, inputs.device)
    layers = find_layers(model)
    check_rank(layers, config.rank)
    log_path = run_dir / LOG_NAME
    if config.overwrite and inputs.dist.is_main:
        log_path.unlink(missing_ok=True)
        shutil.rmtree(run_dir / MODEL_DIR, ignore_errors=True)
    inputs.dist.barrier()  # every process has checked the run directory before rank 0 writes to it
    return EggrollRun(**vars(inputs), config=config, model=model, tokenizer=tokenizer, layers=layers,
                      run_dir=run_dir, log_path=log_path, precision=precision)


class EggrollSearch:
    def __init__(self, run: EggrollRun) -> None:
        self.run, self.config = run, run.config
        self.policy = HFPolicyAdapter(run.model, run.tokenizer, lean_sampler=run.config.lean_sampler,
                                      precision=run.precision, cpu_gemm=run.config.cpu_gemm)
        self.dist = run.dist
        self.logger = JsonlLogger(run.log_path, enabled=self.dist.is_main)
        self.generation = 0
        self.stop = StopSignal("stopping after this generation (Ctrl-C again to abort)")
        self.last_eval: list[dict] = []  # the records of the latest evaluation
        self.order = PromptOrder(run.train.examples, run.config.seed)
        self._mixer_checked = False

    def step(self, generation: int) -> dict:
        cfg, run = self.config, self.run
        population = Population(cfg.population, cfg.rank, cfg.sigma, cfg.seed, generation, cfg.antithetic)
        t0 = time.perf_counter()
        mine = self.dist.shard(range(cfg.population))
        part = answer(self.policy, run.layers, population, self.order.take(generation, cfg.prompts),
                      scorer=run.scorer, mapping=run.mapping, member_batch=cfg.member_batch,
                      max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, members=mine)
        parts = self.dist.all_gather(part)
        ev = mix(MemberEval.joined(parts) if self.dist.active else part, run.mixer, cfg.population)
        if not self._mixer_checked:  # the trainer's refusal, before the first line is written
            check_overlap(run.mixer, set(ev.feedbacks[0].rewards), f"--reward-mixer {cfg.reward_mixer}")
            self._mixer_checked = True
        t1 = time.perf_counter()
        raw, shaped, norm = es_step(run.layers, population, lambda _: ev.fitness, lr=cfg.lr, shaping=cfg.shaping)
        self._check_weights(generation)
        t2 = time.perf_counter()
        record = self._log(generation, ev, raw, shaped, norm, {
            "generate": t1 - t0, "train": t2 - t1,
            **step_resources(self.policy.device, int(sum(ev.completion_tokens)), t1 - t0)})
        self.generation = generation
        return record

    def _check_weights(self, generation: int) -> None:
        """After an update, one pass over the perturbed weights (a float64 sum per layer): stop,
        saving nothing, when one is inf or NaN (every later member would be noise); under
        torchrun, also when the processes' sums differ (their seeded noise differs)."""
        sums = [float(layer.module.weight.detach().sum(dtype=torch.float64)) for layer in self.run.layers]
        bad = next((layer for layer, total in zip(self.run.layers, sums) if not math.isfinite(total)), None)
        if bad is not None:
            cfg = self.config
            raise UserError(f"generation {generation}: the update made weights of {bad.name} inf or NaN (--sigma "
                            f"{cfg.sigma}, --lr {cfg.lr}); the weights were not saved: lower --sigma or --lr and rerun "
                            "with --overwrite")
        if self.dist.active:
            checksums = self.dist.all_gather(sum(sums))
            if len(set(checksums)) > 1:
                raise RuntimeError(f"generation {generation}: the processes' weights differ after the update "
                                   f"(checksums {checksums}); their seeded noise differs (mixed GPU models or MIG "
                                   "profiles?). Run on identical devices; see docs/distributed.md")

    def _log(self, generation: int, ev: MemberEval, raw: np.ndarray, shaped: np.ndarray, norm: float,
             timing: dict) -> dict:
        cfg = self.config
        order = ev.prompt_major()
        axes: dict[str, list[float]] = {}
        for fb in ev.feedbacks:
            for key, value in fb.rewards.items():
                axes.setdefault(key, []).append(value)
        lengths = np.asarray(ev.completion_tokens, dtype=np.float64)
        rl = {
            "lr": cfg.lr,
            "reward_mixed_mean": float(ev.mixed.mean()), "reward_mixed_std": float(ev.mixed.std(unbiased=False)),
            **{f"reward_mean/{k}": float(np.mean(v)) for k, v in axes.items()},
            "completion_length_mean": float(lengths.mean()), "truncated_frac": float(np.mean(ev.truncated)),
        }
        es = {
            "fitness_mean": float(raw.mean()), "fitness_std": float(raw.std()), "fitness_min": float(raw.min()),
            "fitness_max": float(raw.max()), "best_member": int(raw.argmax()), "update_norm": norm,
            "sigma": cfg.sigma, "rank": cfg.rank, "population": cfg.population, "shaping": cfg.shaping,
            "member_fitness": raw.tolist(), "member_shaped": shaped.tolist(),
        }
        p = len(ev.examples)
        generation_rows = [
            {"prompt_id": ev.examples[i % p].id, "completion_id": f"{ev.examples[i % p].id}#{i // p}",
             "prompt_tokens": ev.prompt_tokens[i], "completion_tokens": ev.completion_tokens[i],
             "truncated": ev.truncated[i], "completion": ev.completions[i]}
            for i in order
        ]
        return self.logger.write("step", **step_record(
            step=generation, phase="es", rl=rl, gepa=[ev.feedbacks[i].to_dict() for i in order],
            generation=generation_rows, es=es, timing=timing))

    def evaluate(self, generation: int) -> list[dict]:
        """Greedy evaluation on the held-out split and a train sample: one ``eval`` record each."""
        self.last_eval = [self.logger.write("eval", **fields) for fields in evaluate_run(self.policy, self.run, generation)]
        return self.last_eval

    def fit(self) -> int:
        cfg, run = self.config, self.run
        self.logger.stage("run", **run_record(
            {**cfg.to_dict(), "method": "eggroll"}, run.model, run, None, precision=run.precision.describe(),
            cpu_gemm=self.policy.gemm,
            perturbed_layers=len(run.layers),
            perturbed_parameters=sum(layer.out_features * layer.in_features for layer in run.layers)))
        bar = progress_bar(cfg.generations, "eggroll", cfg.progress and self.dist.is_main)
        try:
            with self.stop:
                if cfg.eval_every:
                    self.evaluate(0)  # the baseline every later eval is read against
                for generation in range(1, cfg.generations + 1):
                    record = self.step(generation)
                    stop = self.dist.any(self.stop.requested)  # every rank stops after the same generation
                    if cfg.evaluates_at(generation, last=generation == cfg.generations or stop):
                        self.evaluate(generation)
                    bar.update(1)
                    bar.set_postfix_str(f"fitness={record['es']['fitness_mean']:.3f} "
                                        f"max={record['es']['fitness_max']:.3f}", refresh=False)
                    if stop:
                        break
                if self.dist.is_main:
                    run.model.save_pretrained(run.run_dir / MODEL_DIR)
                    run.tokenizer.save_pretrained(run.run_dir / MODEL_DIR)
                self.dist.barrier()
                status = "completed" if self.generation == cfg.generations else "interrupted"
                self.logger.write("end", **end_record(step=self.generation, status=status))
                self.dist.barrier()  # no rank exits (torchrun then stops the others) before the end record
        finally:
            bar.close()
            self.logger.close()
        return self.generation


def search(config: EggrollConfig) -> EggrollSearch:
    """Prepare, search for ``config.generations`` and return the search (for paths and state)."""
    searcher = EggrollSearch(prepare(config))
    searcher.fit()
    return searcher
