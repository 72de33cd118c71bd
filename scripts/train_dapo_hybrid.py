#!/usr/bin/env python
"""Train with DAPO on GEPA reward vectors; the same options as ``rg-tracer train``.

    python scripts/train_dapo_hybrid.py --model runs/tiny --dataset datasets/toy_math/addition_small.jsonl \
        --output-dir runs/dapo_hybrid --batch-size 4 --group-size 2 --learning-rate 1e-5 \
        --clip-ratio 0.2 --kl-target 0.1 --kl-coef 0.1 --reward-mixer configs/reward_mixer.yaml \
        --eval-every 100 --seed 42
"""

from rg_tracer.cli import train_command

if __name__ == "__main__":
    train_command(prog_name="train_dapo_hybrid.py")
