"""reasoning-gym tasks: ``rg-tracer data reasoning-gym`` splits, the ``reasoning-gym`` scorer, a short run."""

from __future__ import annotations

import json
import sys

import pytest

from rg_tracer.cli import cli
from rg_tracer.errors import UserError
from rg_tracer.scorers import ReasoningGymScorer, load_scorer, run_scorer
from tests.helpers import MIXER, assert_one_line_error, invoke, read_log

pytest.importorskip("reasoning_gym")

TASKS = ("basic_arithmetic", "leg_counting")


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict:
    """Two tasks, 40 items each (8 held out), written by the command."""
    root = tmp_path_factory.mktemp("rg")
    out = {}
    for task in TASKS:
        result = invoke(cli, "data", "reasoning-gym", "--task", task, "--size", "40", "--seed", "3",
                        "--out", root / task)
        assert result.exit_code == 0, result.output
        assert f"reasoning-gym {task}: 32 train / 8 test items" in result.output
        out[task] = root / task
    return out


@pytest.mark.parametrize("task", TASKS)
def test_split_is_disjoint_and_rows_hold_what_the_verifier_reads(splits, task):
    train, test = rows(splits[task] / "train.jsonl"), rows(splits[task] / "test.jsonl")
    assert (len(train), len(test)) == (32, 8)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert len({r["prompt"] for r in train}) == 32 and len({r["id"] for r in train + test}) == 40
    for row in train + test:
        assert row["task"] == task and row["prompt"] and isinstance(row["answer"], str)
        assert row["metadata"]["source_dataset"] == task and row["task_config"] == {}
    info = json.loads((splits[task] / "dataset.json").read_text())
    assert info["params"]["source"] == "reasoning-gym" and info["params"]["seed"] == 3
    assert info["answers_verified_by"] == "reasoning_gym score_answer"


def test_the_same_seed_gives_the_same_split(splits, tmp_path):
    assert invoke(cli, "data", "reasoning-gym", "--task", "leg_counting", "--size", "40", "--seed", "3",
                  "--out", tmp_path / "again").exit_code == 0
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "again" / name).read_text() == (splits["leg_counting"] / name).read_text()


def test_difficulty_split_draws_each_split_from_its_own_config(tmp_path):
    result = invoke(cli, "data", "reasoning-gym", "--task", "basic_arithmetic", "--size", "30", "--test-frac", "0.5",
                    "--train-config", '{"min_digits": 1, "max_digits": 2}',
                    "--test-config", '{"min_digits": 3, "max_digits": 3}', "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    train, test = rows(tmp_path / "d" / "train.jsonl"), rows(tmp_path / "d" / "test.jsonl")
    assert (len(train), len(test)) == (15, 15)
    assert {r["metadata"]["num_digits"] for r in train} <= {1, 2}
    assert {r["metadata"]["num_digits"] for r in test} == {3}
    assert test[0]["task_config"] == {"min_digits": 3, "max_digits": 3}
    scores = run_scorer(ReasoningGymScorer(), [r["prompt"] for r in test], [r["answer"] for r in test], test)
    assert all(s["correctness"] == 1.0 for s in scores)


@pytest.mark.parametrize("task", TASKS)
def test_scorer_uses_the_task_verifier(splits, task):
    test = rows(splits[task] / "test.jsonl")
    scorer = load_scorer("reasoning-gym")
    assert isinstance(scorer, ReasoningGymScorer)
    prompts = [r["prompt"] for r in test]
    right = run_scorer(scorer, prompts, [r["answer"] for r in test], test)
    assert all(s == {"correctness": 1.0, "format_penalty": 0.0, "answer_length": float(len(r["answer"]))}
               for s, r in zip(right, test))
    tagged = run_scorer(scorer, prompts, [f"thinking...<answer> {r['answer']} </answer>" for r in test], test)
    assert all(s["correctness"] == 1.0 for s in tagged)
    wrong = run_scorer(scorer, prompts, [str(int(float(r["answer"])) + 7) for r in test], test)
    assert all(s["correctness"] == 0.0 and s["format_penalty"] == 0.0 for s in wrong)
    empty, long = run_scorer(scorer, prompts[:2], ["", "9" * 200], test[:2])
    assert empty == {"correctness": 0.0, "format_penalty": 1.0, "answer_length": 0.0}
    assert long["format_penalty"] == 1.0 and long["answer_length"] == 200.0


def test_scorer_refuses_rows_not_written_by_the_generator():
    with pytest.raises(UserError, match="has no reasoning-gym task and metadata"):
        ReasoningGymScorer().score(["1+1="], ["2"], [{"id": "x", "prompt": "1+1=", "answer": "2"}])


@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "unknown reasoning-gym task 'nope'; it has"),
    (["--task", "basic_arithmetic", "--size", "0"], "--size 0 must be in [1, 1,000,000]"),
    (["--task", "basic_arithmetic", "--test-frac", "1.5"], "--test-frac 1.5 must be in (0, 1)"),
    ([], "reasoning-gym needs --task NAME"),
    (["--task", "basic_arithmetic", "--train-config", '{"nope": 1}'], "basic_arithmetic has no option 'nope'"),
    (["--task", "basic_arithmetic", "--train-config", "{x"], "--train-config '{x' is not valid JSON"),
    (["--task", "basic_arithmetic", "--train-config", '{"min_digits": 3, "max_digits": 1}'], "refuses"),
    (["--task", "basic_arithmetic", "--size", "5000", "--train-config",
      '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"], '
      '"allow_parentheses": false, "allow_negation": false}'], "distinct train prompts"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    result = invoke(cli, "data", "reasoning-gym", *args, "--out", tmp_path / "d")
    assert_one_line_error(result, message)
    assert not (tmp_path / "d").exists()


def test_unknown_task_names_valid_ones(tmp_path):
    out = invoke(cli, "data", "reasoning-gym", "--task", "leg_countin", "--out", tmp_path / "d").output
    assert "did you mean leg_counting" in out and "basic_arithmetic" in out


def test_reasoning_gym_options_are_refused_for_other_tasks(tmp_path):
    assert_one_line_error(invoke(cli, "data", "addition", "--task", "gcd", "--out", tmp_path / "d"),
                          "--task is for the reasoning-gym task only")


def test_without_reasoning_gym_one_line_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import reasoning_gym raises ImportError
    result = invoke(cli, "data", "reasoning-gym", "--task", "gcd", "--out", tmp_path / "d")
    assert_one_line_error(result, "pip install 'rg-tracer[reasoning]'")
    with pytest.raises(UserError, match=r"rg-tracer\[reasoning\]"):
        load_scorer("reasoning-gym")


def test_train_two_steps_with_the_reasoning_gym_scorer(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    assert invoke(cli, "data", "reasoning-gym", "--task", "basic_arithmetic", "--size", "20",
                  "--train-config", '{"max_terms": 2, "max_digits": 1}', "--out", data).exit_code == 0
    result = invoke(cli, "train", "--model", tiny_model_dir("qwen2"), "--dataset", data / "train.jsonl",
                    "--scorer", "reasoning-gym", "--reward-mixer", MIXER, "--output-dir", tmp_path / "run",
                    "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "4", "--max-steps", "2",
                    "--eval-every", "2", "--eval-samples", "3", "--threads", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "eval at step 2: test (n=3) correctness" in result.output
    records = read_log(tmp_path / "run" / "train.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]
    sample = steps[0]["gepa"][0]
    assert set(sample["rewards"]) >= {"correctness", "format_penalty"}
    assert set(sample["tags"]) == {"answer_length"}
    assert sample["meta"]["task_id"] == "basic_arithmetic"
