"""What several test modules need, written once: repository paths, a small training config,
reading a log back through the schema, and calling a command as a user would."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

from rg_tracer.schema import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "datasets", "toy_math", "addition_small.jsonl")
MIXER = os.path.join(REPO, "configs", "reward_mixer.yaml")


def config(tmp_path, model_dir, **overrides):
    """A ``TrainConfig`` for a two-step run of a tiny model on the toy addition set."""
    from rg_tracer.dapo.config import TrainConfig

    base = dict(model=str(model_dir), dataset=TOY, output_dir=str(tmp_path / "run"), reward_mixer=MIXER,
                batch_size=2, group_size=2, max_new_tokens=4, max_steps=2, eval_every=2, eval_samples=4,
                learning_rate=1e-2, threads=1, progress=False)
    return TrainConfig(**{**base, **overrides})


def read_log(path) -> list[dict]:
    """Every record of a log, validated (and upgraded) by the schema."""
    return [validate(json.loads(line)) for line in open(path, encoding="utf-8")]


def invoke(command, *args):
    """Run a click command in-process; exceptions propagate (a traceback is a test failure)."""
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, message: str) -> None:
    """A user mistake: exit 1, one line naming the problem, no traceback."""
    assert result.exit_code == 1, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
