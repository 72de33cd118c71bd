"""Run one search under torchrun and save each rank's final weights (for the distributed tests).

    torchrun --standalone --nproc-per-node 2 tests/distributed/driver.py SPEC.json

SPEC: {"search": "train"|"eggroll", "config": {...}, "weights_dir": PATH}. Each rank writes
``weights_dir/rank<R>.safetensors``, so a test can compare the ranks bit for bit.
"""

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec["search"] == "train":
        from rg_tracer.dapo.config import TrainConfig
        from rg_tracer.dapo.trainer import train

        model = train(TrainConfig(**spec["config"])).run.model
    else:
        from rg_tracer.eggroll.config import EggrollConfig
        from rg_tracer.eggroll.search import search

        model = search(EggrollConfig(**spec["config"])).run.model
    out = Path(spec["weights_dir"])
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # clones: tied weights
    save_file(state, str(out / f"rank{os.environ.get('RANK', '0')}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
