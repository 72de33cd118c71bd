"""Documented contracts stay true: the schema doc's example is a valid record."""

import json
from pathlib import Path

from rg_tracer.schema import RL_KEYS, validate

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_log_schema_example_validates_and_lists_rl_keys():
    text = (DOCS / "log_schema.md").read_text(encoding="utf-8")
    record = validate(json.loads(text.split("```json")[1].split("```")[0]))
    assert record["kind"] == "step"
    assert ", ".join(RL_KEYS) in text  # the always-present rl keys are documented
