import math

import pytest

from rg_tracer.errors import UserError
from rg_tracer.runtime.feedback_adapter import make_gepa_feedback
from rg_tracer.scorers import FeedbackMappingConfig


def test_default_mapping_takes_unclaimed_keys_as_rewards():
    cfg = FeedbackMappingConfig(tag_keys=("length",), verifier_keys={"unit_tests": "tests_pass"})
    fb = make_gepa_feedback(
        {"correctness": 1, "style": 0.5, "length": 7, "unit_tests": True},
        cfg, meta={"id": "p1", "task": "add"},
    )
    assert fb.rewards == {"correctness": 1.0, "style": 0.5}
    assert fb.tags == {"length": 7.0}
    assert fb.verifier == {"tests_pass": 1.0}
    assert fb.meta == {"task_id": "add", "prompt_id": "p1"}
    assert fb.abstained is False


def test_explicit_keys_fields_and_abstain():
    cfg = FeedbackMappingConfig(reward_keys=("c",), task_id_field="family", prompt_id_field="uid",
                                abstain_field="gave_up")
    fb = make_gepa_feedback({"c": 0.0, "gave_up": 1.0, "other": 3.0}, cfg,
                            meta={"family": "mod", "uid": 9})
    assert fb.rewards == {"c": 0.0}
    assert fb.abstained is True
    assert fb.meta == {"task_id": "mod", "prompt_id": "9"}


def test_missing_reward_key_names_key_and_sample():
    cfg = FeedbackMappingConfig(reward_keys=("correctness",))
    with pytest.raises(UserError, match=r"step 3, sample 5.*'correctness'"):
        make_gepa_feedback({"other": 1.0}, cfg, sample="step 3, sample 5")


@pytest.mark.parametrize("bad", [math.nan, math.inf, "1.0", None, [1]])
def test_non_numeric_or_non_finite_values_are_rejected(bad):
    with pytest.raises(UserError, match=r"sample 2: key 'x'"):
        make_gepa_feedback({"x": bad}, FeedbackMappingConfig(), sample="sample 2")
