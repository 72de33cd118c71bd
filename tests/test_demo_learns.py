"""The demo's promise: a randomly initialised model learns the toy task with RL."""

import json

from rg_tracer.config import TrainConfig
from rg_tracer.dapo.dapo_hybrid_trainer import train
from rg_tracer.models import TinyModelSpec, init_model
from tests.conftest import REPO


def test_demo_settings_raise_correctness(tmp_path):
    init_model(tmp_path / "model", TinyModelSpec(arch="qwen2", layers=2, hidden=64, heads=4))
    config = TrainConfig.from_file(f"{REPO}/configs/demo/train.yaml", model=str(tmp_path / "model"),
                                   output_dir=str(tmp_path / "run"), max_steps=1000, eval_every=0,
                                   save_every=0, progress=False,
                                   dataset=f"{REPO}/datasets/toy_math/addition_tiny.jsonl",
                                   reward_mixer=f"{REPO}/configs/demo/reward_mixer.yaml")
    trainer = train(config)
    steps = [r for r in map(json.loads, open(trainer.run.log_path)) if r["kind"] == "step"]

    def correctness(records):
        values = [s["rewards"]["correctness"] for r in records for s in r["gepa"]]
        return sum(values) / len(values)

    first, last = correctness(steps[:100]), correctness(steps[-100:])
    assert last - first >= 0.2, (first, last)
