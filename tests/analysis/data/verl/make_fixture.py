"""Write the verl fixture run (``grpo_run/``) with verl's own writer code.

Run once by hand (``python tests/analysis/data/verl/make_fixture.py``; needs ``orjson``, which
verl's ``FileLogger`` uses: ``pip install --target /tmp/orjson orjson`` and ``PYTHONPATH=/tmp/orjson``).
The tests read the committed files, not this script. The writers below are copied from verl
(commit b178a3cd5, version 0.8.0.dev; see README.md): ``RayPPOTrainer._dump_generations``
(verl/trainer/ppo/ray_trainer.py) and ``FileLogger.log`` (verl/utils/tracking.py).

The run it stands for: GRPO on a GSM8K-style data source ``openai/gsm8k``, 2 prompts x 2 rollouts
per step, 3 steps (``trainer.total_training_steps=3``), ``use_kl_loss=True``, a reward function
that returns ``{"score", "acc", "pred"}`` (verl's DAPO-style math reward), validation before
training and every 2 steps (``test_freq=2``, so at steps 0, 2 and 3, the last), with::

    hydra.run.dir=$RUN trainer.rollout_data_dir=$RUN/rollout trainer.validation_data_dir=$RUN/validation
    trainer.logger='[console,file]'  VERL_FILE_LOGGER_PATH=$RUN/metrics.jsonl
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import orjson

RUN = Path(__file__).parent / "grpo_run"
SYSTEM = "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\nuser\n"
SUFFIX = " Let's think step by step and output the final answer after \"####\".\nassistant\n"


def prompt(question: str) -> str:
    """What ``tokenizer.batch_decode(prompts, skip_special_tokens=True)`` gives for a Qwen2.5 chat prompt."""
    return SYSTEM + question + SUFFIX


class Dumper:
    """verl's ``_dump_generations``, verbatim but for ``self``."""

    def __init__(self, global_steps: int) -> None:
        self.global_steps = global_steps

    def _dump_generations(self, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path):
        """Dump rollout/validation samples as JSONL."""
        os.makedirs(dump_path, exist_ok=True)
        filename = os.path.join(dump_path, f"{self.global_steps}.jsonl")

        n = len(inputs)
        base_data = {
            "input": inputs,
            "output": outputs,
            "gts": gts,
            "score": scores,
            "step": [self.global_steps] * n,
        }

        for k, v in reward_extra_infos_dict.items():
            if len(v) == n:
                base_data[k] = v

        lines = []
        for i in range(n):
            entry = {k: v[i] for k, v in base_data.items()}
            lines.append(json.dumps(entry, ensure_ascii=False))

        with open(filename, "w") as f:
            f.write("\n".join(lines) + "\n")


class FileLogger:
    """verl's ``FileLogger`` (``VERL_FILE_LOGGER_PATH`` set)."""

    def __init__(self, filepath: str) -> None:
        self.fp = open(filepath, "wb", buffering=0)

    def log(self, data, step):
        data = {"step": step, "data": data}
        self.fp.write(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")

    def finish(self):
        self.fp.close()


# (question, answer) per prompt; per step the rollouts: (prompt index, output, predicted answer)
QUESTIONS = [("Natalia sold 48 clips in April and half as many in May. How many clips did she sell?", "72"),
             ("Weng earns $12 an hour. She did 50 minutes of babysitting. How much did she earn?", "10"),
             ("Betty needs $100. She has half of it, her parents give $15 and her grandparents twice that. "
              "How much more does she need?", "5"),
             ("Julie read 12 pages yesterday and twice as many today of a 120-page book. How many pages are left?",
              "84"),
             ("James writes a 3-page letter to 2 friends twice a week. How many pages does he write a year?", "624"),
             ("Mark has 10 yellow flowers and 80% more purple ones. How many purple flowers does he have?", "18")]
TRAIN = {
    # step 1: balance_batch reordered the samples (prompt 0, 1, 0, 1)
    1: [(0, "48 / 2 = 24 clips in May.\n#### 24", "24"), (1, "12 * 50 = 600\n#### 600", "600"),
        (0, "In May she sold 48 / 2 = 24. Total 48 + 24 = 72.\n#### 72", "72"),
        (1, "50 minutes is 50/60 of an hour, 12 * 50 / 60 = 10.\n#### 10", "10")],
    2: [(2, "She has 50. Parents 15, grandparents 30. 100 - 95 = 5.\n#### 5", "5"),
        (2, "100 - 50 - 15 = 35\n#### 35", "35"),
        (3, "Today 24 pages. 120 - 12 - 24 = 84.\n#### 84", "84"),
        (3, "120 - 12 = 108\n#### 108", "108")],
    3: [(0, "May: 24. April + May = 72.\n#### 72", "72"), (0, "48 + 24 = 72\n#### 72", "72"),
        (4, "3 * 2 * 2 = 12 pages a week, 12 * 52 = 624.\n#### 624", "624"),
        (4, "3 * 2 = 6 a week, 6 * 52 = 312\n#### 312", "312")],
}
VAL = {  # the same two held-out prompts (5 and 1) x 2 samples at each validation
    0: [(5, "10 * 0.8 = 8\n#### 8", "8"), (5, "#### 8", "8"), (1, "12 * 50 = 600\n#### 600", "600"),
        (1, "#### 0.2", "0.2")],
    2: [(5, "80% of 10 is 8, so 10 + 8 = 18.\n#### 18", "18"), (5, "10 + 8\n#### 18", "18"),
        (1, "12 / 60 * 50 = 10\n#### 10", "10"), (1, "12 * 50 = 600\n#### 600", "600")],
    3: [(5, "10 + 80% of 10 = 18\n#### 18", "18"), (5, "8 more, 18.\n#### 18", "18"),
        (1, "$0.2 a minute, 0.2 * 50 = 10\n#### 10", "10"), (1, "#### 10", "10")],
}


def reward(samples):
    """The reward function's output: scores and ``reward_extra_info`` (score, acc, pred)."""
    acc = [pred == QUESTIONS[i][1] for i, _, pred in samples]
    scores = [1.0 if a else -1.0 for a in acc]
    return scores, {"score": list(scores), "acc": acc, "pred": [pred for _, _, pred in samples]}


def dump(step: int, samples, path: Path, *, validation: bool) -> list[float]:
    scores, extra = reward(samples)
    if validation:  # _validate puts "reward" first (reward_extra_infos_dict["reward"].extend(scores))
        extra = {"reward": list(scores), **extra}
    Dumper(step)._dump_generations(
        inputs=[prompt(QUESTIONS[i][0]) for i, _, _ in samples], outputs=[out for _, out, _ in samples],
        gts=[QUESTIONS[i][1] for i, _, _ in samples], scores=scores, reward_extra_infos_dict=extra,
        dump_path=str(path))
    return scores


def val_metrics(samples, scores) -> dict:
    """What ``_val_metrics_update`` logs for one data source with n = 2 samples per prompt."""
    _, extra = reward(samples)
    vars_ = {"reward": scores, "score": extra["score"], "acc": [float(a) for a in extra["acc"]]}
    out = {}
    for var, vals in vars_.items():
        per_prompt = [vals[k:k + 2] for k in range(0, len(vals), 2)]
        metric2val = {"mean@2": statistics.fmean(vals),
                      "std@2": statistics.fmean(statistics.pstdev(p) for p in per_prompt),
                      "best@2/mean": statistics.fmean(max(p) for p in per_prompt), "best@2/std": 0.0,
                      "worst@2/mean": statistics.fmean(min(p) for p in per_prompt), "worst@2/std": 0.0,
                      "maj@2/mean": statistics.fmean(p[0] for p in per_prompt), "maj@2/std": 0.0}
        for metric_name, metric_val in metric2val.items():  # _val_metrics_update's val-core rule
            core = var == "acc" and metric_name.startswith(("mean", "maj", "best")) and "@2" in metric_name
            out[f"{'val-core' if core else 'val-aux'}/openai/gsm8k/{var}/{metric_name}"] = metric_val
    return out


def train_metrics(step: int, samples, scores) -> dict:
    """The metrics dict ``fit`` logs at a training step, in the order verl fills it."""
    lengths = [len(out) // 3 for _, out, _ in samples]  # stand-in token counts
    kl = 0.0011 * step
    metrics = {"actor/entropy": 0.62 - 0.03 * step, "perf/mfu/actor_infer": 0.031,
               "actor/pg_loss": -0.012 + 0.004 * step, "actor/kl_loss": kl, "actor/pg_clipfrac": 0.002 * step,
               "actor/ppo_kl": 1.5e-05 * step, "actor/pg_clipfrac_lower": 0.0, "actor/kl_coef": 0.001,
               "actor/grad_norm": 0.31 + 0.02 * step, "perf/mfu/actor": 0.052,
               "perf/max_memory_allocated_gb": 21.4, "perf/max_memory_reserved_gb": 24.0,
               "perf/cpu_memory_used_gb": 61.2, "actor/lr": 1e-06}
    if step in VAL:
        metrics.update(VAL_METRICS[step])
    scores_mean = statistics.fmean(scores)
    metrics.update({
        "training/global_step": step, "training/epoch": 0,
        "critic/score/mean": scores_mean, "critic/score/max": max(scores), "critic/score/min": min(scores),
        "critic/rewards/mean": scores_mean, "critic/rewards/max": max(scores), "critic/rewards/min": min(scores),
        "critic/advantages/mean": 0.0, "critic/advantages/max": 0.7071, "critic/advantages/min": -0.7071,
        "critic/returns/mean": 0.0, "critic/returns/max": 0.7071, "critic/returns/min": -0.7071,
        "response_length/mean": statistics.fmean(lengths), "response_length/max": max(lengths),
        "response_length/min": min(lengths), "response_length/clip_ratio": 0.0,
        "response_length_non_aborted/mean": statistics.fmean(lengths),
        "response_length_non_aborted/max": max(lengths), "response_length_non_aborted/min": min(lengths),
        "response_length_non_aborted/clip_ratio": 0.0, "response/aborted_ratio": 0.0,
        "prompt_length/mean": 61.0, "prompt_length/max": 66.0, "prompt_length/min": 57.0,
        "prompt_length/clip_ratio": 0.0,
        "timing_s/start_profile": 2.1e-05, "timing_s/gen": 4.71 - 0.2 * step, "timing_s/reward": 0.013,
        "timing_s/old_log_prob": 0.62, "timing_s/ref": 0.58, "timing_s/adv": 0.004,
        "timing_s/update_actor": 1.93, "timing_s/update_weights": 0.41, "timing_s/dump_rollout_generations": 0.002,
        **({"timing_s/testing": 1.2} if step in VAL else {}),
        "timing_s/stop_profile": 1.1e-05, "timing_s/step": 8.9 - 0.2 * step,
        "timing_per_token_ms/gen": 0.071, "timing_per_token_ms/ref": 0.0021,
        "timing_per_token_ms/adv": 1.4e-05, "timing_per_token_ms/update_actor": 0.0069,
        "perf/total_num_tokens": 281, "perf/time_per_step": 8.9 - 0.2 * step, "perf/throughput": 31.6,
    })
    return metrics


VAL_METRICS: dict[int, dict] = {}

# hydra's <run dir>/.hydra/config.yaml (OmegaConf.to_yaml of the composed config, interpolations
# unresolved), cut to the keys this run set or that the reader uses
CONFIG = """\
actor_rollout_ref:
  model:
    path: Qwen/Qwen2.5-0.5B-Instruct
  actor:
    strategy: fsdp
    ppo_mini_batch_size: 2
    use_kl_loss: true
    kl_loss_coef: 0.001
    kl_loss_type: low_var_kl
    entropy_coeff: 0
    optim:
      lr: 1.0e-06
  rollout:
    name: vllm
    n: 2
    val_kwargs:
      n: 2
      do_sample: true
data:
  train_files: ~/data/gsm8k/train.parquet
  val_files: ~/data/gsm8k/test.parquet
  train_batch_size: 2
  max_prompt_length: 512
  max_response_length: 1024
  seed: null
algorithm:
  adv_estimator: grpo
  use_kl_in_reward: false
trainer:
  project_name: verl_fixture
  experiment_name: gsm8k_grpo
  logger:
  - console
  - file
  rollout_data_dir: ${hydra:run.dir}/rollout
  validation_data_dir: ${hydra:run.dir}/validation
  test_freq: 2
  save_freq: -1
  val_before_train: true
  total_epochs: 1
  total_training_steps: 3
  default_local_dir: checkpoints/${trainer.project_name}/${trainer.experiment_name}
"""


def main() -> None:
    (RUN / ".hydra").mkdir(parents=True, exist_ok=True)
    (RUN / ".hydra" / "config.yaml").write_text(CONFIG)
    logger = FileLogger(str(RUN / "metrics.jsonl"))
    for step, samples in VAL.items():
        VAL_METRICS[step] = val_metrics(samples, dump(step, samples, RUN / "validation", validation=True))
    logger.log(data=VAL_METRICS[0], step=0)  # "Initial validation metrics" (val_before_train)
    for step, samples in TRAIN.items():
        scores = dump(step, samples, RUN / "rollout", validation=False)
        logger.log(data=train_metrics(step, samples, scores), step=step)
    logger.finish()


if __name__ == "__main__":
    RUN.mkdir(parents=True, exist_ok=True)
    main()
