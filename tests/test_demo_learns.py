"""The demo's promise: after its supervised warm-up, RL raises correctness on held-out prompts."""

import json

from rg_tracer.demo_run import demo_run
from tests.helpers import REPO


def test_demo_settings_generalise_to_held_out_prompts(tmp_path):
    trainer = demo_run(tmp_path, output_dir=str(tmp_path / "run"), max_steps=960, eval_every=80,
                       progress=False, dataset=f"{REPO}/datasets/toy_math/add_nocarry.jsonl",
                       reward_mixer=f"{REPO}/configs/demo/reward_mixer.yaml")
    assert trainer.config.sft_steps == 80  # the eval at step 80 ends the warm-up: what follows is RL's doing
    evals = [r for r in map(json.loads, open(trainer.run.log_path)) if r["kind"] == "eval" and r["split"] == "test"]
    assert [e["step"] for e in evals[:2]] == [0, 80] and evals[-1]["step"] == 960 and evals[-1]["n"] >= 100
    first, last = evals[1]["metrics"]["correctness"], evals[-1]["metrics"]["correctness"]
    assert last - first >= 0.2, (first, last)
