"""EGGROLL end to end: a tiny real search, its log, the fitness export, and the CLI as users meet it."""

import json
import os

import click
import polars as pl
import pytest
from click.testing import CliRunner

from rg_tracer.cli.eggroll import eggroll_command, fitness
from rg_tracer.eggroll.shaping import centered_rank
from rg_tracer.schema import ES_KEYS, RL_KEYS, validate
from tests.helpers import MIXER, REPO, TOY, assert_one_line_error, invoke, read_log

N, P = 4, 2  # population, prompts per generation


def search_args(model, out, *extra):
    return ["--model", model, "--dataset", TOY, "--output-dir", out, "--reward-mixer", MIXER,
            "--population", N, "--prompts", P, "--generations", 2, "--max-new-tokens", 3,
            "--eval-samples", 4, "--threads", 1, "--no-progress", *extra]


@pytest.fixture(scope="module")
def es_run(tmp_path_factory, tiny_model_dir):
    """One 2-generation search through the CLI; returns (runs dir, run dir)."""
    runs = tmp_path_factory.mktemp("runs")
    result = invoke(eggroll_command, *search_args(tiny_model_dir("qwen2"), runs / "es1", "--rank", 2))
    assert result.exit_code == 0, result.output
    assert "train.jsonl" in result.output
    return runs, runs / "es1"


def test_search_logs_valid_records_like_an_rl_run(es_run):
    _, run_dir = es_run
    records = read_log(run_dir / "train.jsonl")
    kinds = [(r["kind"], r.get("step")) for r in records]
    assert kinds == [("run", None), ("eval", 0), ("eval", 0), ("step", 1), ("step", 2), ("eval", 2), ("eval", 2),
                     ("end", 2)]  # --eval-every 100: generation 0 and the last
    run, step = records[0], records[3]
    assert run["config"]["method"] == "eggroll" and run["config"]["population"] == N
    assert run["reward_weights"]["correctness"] == 1.0 and run["model"]["perturbed_layers"] == 7
    assert step["phase"] == "es" and set(ES_KEYS) <= set(step["es"])
    assert not (set(RL_KEYS) - {"lr"}) & set(step["rl"])  # no pseudo-RL loss, KL or gradient norm
    assert len(step["gepa"]) == len(step["generation"]) == N * P
    ids = [g["completion_id"] for g in step["generation"]]
    prompt = step["generation"][0]["prompt_id"]
    assert ids[:N] == [f"{prompt}#{m}" for m in range(N)]  # prompt-major, one completion per member
    assert [s["meta"]["member"] for s in step["gepa"][:N]] == list(range(N))
    assert [s["meta"]["sign"] for s in step["gepa"][:N]] == [1, -1, 1, -1]
    fit = step["es"]["member_fitness"]
    assert len(fit) == N and step["es"]["fitness_mean"] == pytest.approx(sum(fit) / N)
    assert step["es"]["fitness_max"] == max(fit) and fit[step["es"]["best_member"]] == max(fit)
    assert step["es"]["member_shaped"] == centered_rank(fit).tolist() and step["es"]["shaping"] == "centered_rank"
    assert {"correctness", "format_penalty"} <= set(step["gepa"][0]["rewards"])
    assert (run_dir / "model" / "config.json").is_file()


def test_member_fitness_is_the_mixed_reward_the_trainer_would_use(es_run):
    from gepa_dapo_grn.reward_mixers import mix_reward_vectors

    from rg_tracer.reward_mixer import load_reward_mixer

    _, run_dir = es_run
    step = next(r for r in read_log(run_dir / "train.jsonl") if r["kind"] == "step")
    mixed, _ = mix_reward_vectors([s["rewards"] for s in step["gepa"]], load_reward_mixer(MIXER))
    per_member = mixed.view(P, N).mean(0)  # logged prompt-major: (P, N)
    assert per_member.tolist() == pytest.approx(step["es"]["member_fitness"], abs=1e-6)


def test_export_matches_the_logged_member_fitness(es_run, tmp_path):
    runs, run_dir = es_run
    out = tmp_path / "fitness.parquet"
    result = invoke(fitness, "export", runs, "--out", out, "--shaping", "centered_rank")
    assert result.exit_code == 0, result.output
    assert f"{2 * N} rows from 1 run written to {out}" in result.output
    table = pl.read_parquet(out)
    steps = [r for r in read_log(run_dir / "train.jsonl") if r["kind"] == "step"]
    for step in steps:
        rows = table.filter(pl.col("step") == step["step"]).sort("member")
        assert rows["member"].to_list() == list(range(N)) and rows["sign"].to_list() == [1, -1, 1, -1]
        assert rows["fitness_raw"].to_list() == pytest.approx(step["es"]["member_fitness"], abs=1e-6)
        assert rows["fitness"].to_list() == pytest.approx(step["es"]["member_shaped"], abs=1e-9)
    assert set(table["shaping"]) == {"centered_rank"} and set(table["shaping_scope"]) == {"step"}
    assert table["weight_correctness"].to_list() == [1.0] * (2 * N)
    assert json.loads(table["weights"][0]) == {"correctness": 1.0, "format_penalty": -0.25, "reasoning_quality": 0.5}
    assert {"reward_correctness", "reward_answer_closeness", "n_samples", "weights_source"} <= set(table.columns)
    assert table["n_samples"].to_list() == [P] * (2 * N)


def _write_rl_log(path):
    """Two RL steps, two samples each, axes a and b (hand-checked below)."""
    lines = [{"schema": "rg-tracer/2", "kind": "run", "config": {}, "versions": {}, "model": {}, "dataset": {},
              "seed": 0, "resumed_from_step": None, "reward_weights": {"a": 1.0, "b": -0.5}}]
    for step, samples in ((1, [(1.0, 0.0, "t1"), (0.0, 2.0, "t2")]), (2, [(1.0, 1.0, "t1"), (1.0, 0.0, "t1")])):
        lines.append({
            "schema": "rg-tracer/2", "kind": "step", "step": step, "rl": dict.fromkeys(RL_KEYS, 0.0),
            "gepa": [{"rewards": {"a": a, "b": b}, "tags": {}, "verifier": {}, "meta": {"task_id": task,
                      "prompt_id": f"p{i}"}, "abstained": False} for i, (a, b, task) in enumerate(samples)],
            "generation": [{"prompt_id": f"p{i}", "completion_id": f"p{i}#{i}", "prompt_tokens": 1,
                            "completion_tokens": 1, "truncated": False, "completion": "x"} for i in range(2)],
            "curriculum": {}, "safety": {}})
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(validate(line)) + "\n" for line in lines))


def test_export_of_an_rl_run_by_hand(tmp_path):
    _write_rl_log(tmp_path / "runs" / "rl" / "train.jsonl")
    out = tmp_path / "f.csv"
    assert invoke(fitness, "export", tmp_path / "runs", "--out", out, "--shaping", "zscore").exit_code == 0
    table = pl.read_csv(out)
    # step 1: scalars 1·1 - 0.5·0 = 1 and 0 - 0.5·2 = -1 -> mean 0; step 2: 0.5 and 1 -> mean 0.75
    assert table["fitness_raw"].to_list() == pytest.approx([0.0, 0.75])
    assert table["fitness"].to_list() == pytest.approx([-1.0, 1.0])  # zscore over the run's steps
    assert table["shaping_scope"].to_list() == ["run", "run"] and table["member"].null_count() == 2
    assert table["reward_b"].to_list() == pytest.approx([1.0, 0.5])
    by_task = fitness_table_for(tmp_path, "task", weights=str(tmp_path / "w.yaml"))
    # weights file: a: 2 -> step 1: t1 = 2, t2 = 0; step 2: t1 = mean(2, 2) = 2; shaped within each step
    assert by_task.select("step", "task_id", "fitness_raw", "fitness").rows() == [
        (1, "t1", 2.0, 1.0), (1, "t2", 0.0, -1.0), (2, "t1", 2.0, 0.0)]
    assert by_task["weights_source"][0].endswith("w.yaml") and by_task["weight_b"][0] == 0.0


def fitness_table_for(tmp_path, by, weights):
    (tmp_path / "w.yaml").write_text("weights: {a: 2.0}\n")
    out = tmp_path / f"by_{by}.parquet"
    result = invoke(fitness, "export", tmp_path / "runs", "--out", out, "--by", by, "--weights", weights,
                    "--shaping", "zscore")
    assert result.exit_code == 0, result.output
    return pl.read_parquet(out)


def test_every_command_has_help_with_an_example():
    for args in ([eggroll_command], [fitness], [fitness, "export"]):
        result = invoke(args[0], *args[1:], "--help")
        assert result.exit_code == 0 and "Example" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--population", 7], "--population 7 is odd, but antithetic sampling pairs each member"),
    (["--rank", 40], "--rank 40 exceeds min(m, n) = 32 of layer"),
    (["--sigma", 0], "--sigma 0.0 must be a finite number > 0"),
    (["--sigma", -0.1], "--sigma -0.1 must be a finite number > 0"),
    (["--member-batch", 3], "--member-batch 3 must divide --population 4 and be even"),
    (["--reward-mixer", "{bad_mixer}"], "no reward-mixer weight matches a reward the scorer produces"),
])
def test_search_user_errors_are_one_line_and_write_nothing(tmp_path, tiny_model_dir, extra, message):
    bad_mixer = tmp_path / "mixer.yaml"
    bad_mixer.write_text("weights: {helpfulness: 1.0}\n")
    args = search_args(tiny_model_dir("qwen2"), tmp_path / "run") + [str(e).format(bad_mixer=bad_mixer) for e in extra]
    assert_one_line_error(invoke(eggroll_command, *args), message)
    assert not (tmp_path / "run").exists()


def test_export_user_errors(tmp_path, es_run):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "f.parquet"
    assert_one_line_error(invoke(fitness, "export", empty, "--out", out), f"no run logs (*.jsonl) under {empty}")
    assert_one_line_error(invoke(fitness, "export", es_run[0], "--out", tmp_path / "f.txt"),
                          "name the file .parquet (or .csv for CSV)")
    assert_one_line_error(invoke(fitness, "export", es_run[0], "--out", out, "--weights", tmp_path / "no.yaml"),
                          "no.yaml: no such file")
    assert not out.exists() and not list(tmp_path.glob(".f.parquet*")) and not list(empty.iterdir())


def test_member_batches_give_the_same_fitness_as_one_forward(tiny_model_dir):
    from rg_tracer.runtime.policy_adapter import HFPolicyAdapter
    from rg_tracer.data import load_dataset
    from rg_tracer.eggroll import Population, find_layers
    from rg_tracer.eggroll.members import evaluate_members
    from rg_tracer.models import load_model
    from rg_tracer.reward_mixer import load_reward_mixer
    from rg_tracer.scorers import ArithmeticScorer

    model, tok = load_model(str(tiny_model_dir("qwen2")))
    policy, layers = HFPolicyAdapter(model, tok), find_layers(model)
    examples = list(load_dataset(TOY).examples[:3])
    kw = dict(scorer=ArithmeticScorer(), mapping=ArithmeticScorer.feedback_mapping, mixer=load_reward_mixer(MIXER),
              max_new_tokens=3, temperature=0.0)
    pop = Population(8, 1, 0.5, seed=0, generation=1)
    whole = evaluate_members(policy, layers, pop, examples, member_batch=0, **kw)
    batched = evaluate_members(policy, layers, pop, examples, member_batch=2, **kw)
    assert batched.completions == whole.completions and batched.fitness.tolist() == whole.fitness.tolist()
    assert len(set(whole.completions)) > 1  # the members do differ


def test_demo_config_file_loads(tiny_model_dir):
    from rg_tracer.eggroll.config import EggrollConfig

    path = os.path.join(REPO, "configs", "eggroll", "demo.yaml")
    cfg = EggrollConfig.from_file(path, model=str(tiny_model_dir("qwen2")), generations=3)
    assert cfg.population == 32 and cfg.generations == 3 and cfg.shaping == "centered_rank"


def test_export_normalises_axes_within_a_step_when_the_mixer_says_so(tmp_path):
    _write_rl_log(tmp_path / "runs" / "rl" / "train.jsonl")
    (tmp_path / "n.yaml").write_text("weights: {a: 1.0}\nnormalize: true\n")
    out = tmp_path / "n.parquet"
    result = invoke(fitness, "export", tmp_path / "runs", "--out", out, "--by", "task",
                    "--weights", tmp_path / "n.yaml")
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    # step 1: a = (1, 0) z-scores to (1, -1); step 2: a = (1, 1) has no spread -> 0
    assert table.select("step", "task_id", "fitness_raw").rows() == [(1, "t1", 1.0), (1, "t2", -1.0), (2, "t1", 0.0)]
    assert table["mixer_normalize"].to_list() == [True] * 3 and table["reward_a"].to_list() == [1.0, 0.0, 1.0]


def test_rg_tracer_analyze_reports_the_search(es_run, tmp_path):
    from rg_tracer.cli import analyze as commands

    result = CliRunner().invoke(commands.analyze_command, [str(es_run[0]), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "index.html").is_file()
    from analysis import open_runs

    with open_runs(es_run[0]) as runs:  # every logged line ingested, none rejected
        assert runs.sql("SELECT count(*) AS n FROM ingest_errors")["n"][0] == 0
        assert runs.runs()["n_steps"].to_list() == [2]


def test_cli_units_match_the_export_and_the_cli_module_stays_light():
    """``rg-tracer --help`` must not load torch or polars, and rg_tracer.cli can import the commands."""
    import subprocess
    import sys

    from rg_tracer.cli.eggroll import UNITS
    from rg_tracer.eggroll.export import BY

    assert UNITS == tuple(BY)
    code = ("import sys, rg_tracer.cli; "
            "print(*(m in sys.modules for m in ('torch', 'polars', 'duckdb', 'rg_tracer.cli.eggroll')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout
    assert out.split() == ["False", "False", "False", "True"]


def test_commands_register_on_the_rg_tracer_group():
    from rg_tracer.cli import cli

    group = click.Group("rg-tracer", commands=dict(cli.commands))
    group.add_command(eggroll_command)
    group.add_command(fitness)
    result = CliRunner().invoke(group, ["fitness", "export", "--help"])
    assert result.exit_code == 0 and "--shaping [none|zscore|centered_rank]" in result.output
