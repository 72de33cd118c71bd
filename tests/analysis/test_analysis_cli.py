"""The click commands, through CliRunner on a local group."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from synth import known_run, step_record, write_log

from rg_tracer.cli.analyze import analyze_command, ingest_command


@pytest.fixture
def cli() -> click.Group:
    group = click.Group("rg-tracer")
    for command in (ingest_command, analyze_command):
        group.add_command(command)
    return group


def test_every_command_has_help_with_an_example(cli):
    runner = CliRunner()
    for name in ("ingest", "analyze"):
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0
        assert "Example:" in result.output and f"rg-tracer {name} runs/" in result.output


def test_ingest_reports_bad_lines_with_file_and_line(cli, runs_dir):
    lines = [json.dumps(step_record(1, [{"a": 1.0}])), "oops", json.dumps(step_record(2, [{"a": 2.0}]))]
    log = write_log(runs_dir / "r" / "train.jsonl", lines, check=False)
    result = CliRunner().invoke(cli, ["ingest", str(runs_dir)])
    assert result.exit_code == 0, result.output
    assert f"{log}:2: <line>: not valid JSON" in result.output
    assert result.output.strip().splitlines()[-1] == str(runs_dir / "rg_tracer.duckdb")


def test_ingest_prints_what_it_read_with_a_default_and_what_it_left_out(cli, runs_dir):
    import os

    run = {"schema": "rg-tracer/2", "kind": "run", "config": {}, "model": {}, "dataset": {}, "resumed_from_step": None}
    log = write_log(runs_dir / "r" / "train.jsonl", [json.dumps(run), json.dumps(step_record(1, [{"a": 1.0}]))],
                    check=False)
    os.mkfifo(runs_dir / "pipe.jsonl")
    result = CliRunner().invoke(cli, ["ingest", str(runs_dir)])
    assert result.exit_code == 0, result.output
    assert f"note: {log}:1: versions: missing; read as {{}}" in result.output
    assert "note: " in result.output and "pipe.jsonl" in result.output


def test_analyze_prints_the_index(cli, runs_dir, tmp_path):
    write_log(runs_dir / "exp" / "train.jsonl", known_run(steps=60, change_at=30))
    out = tmp_path / "reports"
    result = CliRunner().invoke(cli, ["analyze", str(runs_dir), "--out", str(out), "--max-lag", "3",
                                      "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out / "index.html")
    assert (out / "exp" / "summary.json").is_file() and (tmp_path / "x.duckdb").is_file()


def test_user_mistakes_are_one_line_errors(runs_dir, tmp_path):
    runner = CliRunner()
    empty = runner.invoke(ingest_command, [str(runs_dir)])
    assert empty.exit_code == 1
    assert "Error: no *.jsonl logs under" in empty.output and "Traceback" not in empty.output
    missing = runner.invoke(analyze_command, [str(tmp_path / "nope")])
    assert missing.exit_code == 2  # click usage error: the path does not exist
    write_log(runs_dir / "r" / "train.jsonl", known_run(steps=5))
    other = tmp_path / "other"
    write_log(other / "r" / "train.jsonl", known_run(steps=5))
    db = tmp_path / "shared.duckdb"
    assert runner.invoke(ingest_command, [str(runs_dir), "--db", str(db)]).exit_code == 0
    clash = runner.invoke(ingest_command, [str(other), "--db", str(db)])
    assert clash.exit_code == 1 and "pass --db with a new file" in clash.output
    bad_lag = runner.invoke(analyze_command, [str(runs_dir), "--max-lag", "-1"])
    assert bad_lag.exit_code == 2


def test_default_max_lag_matches_the_library():
    from rg_tracer.cli.analyze import DEFAULT_MAX_LAG
    from analysis.correlations import DEFAULT_MAX_LAG as LIBRARY

    assert DEFAULT_MAX_LAG == LIBRARY


def test_the_rg_tracer_cli_registers_both_commands():
    from rg_tracer.cli import cli

    assert cli.commands["ingest"] is ingest_command
    assert cli.commands["analyze"] is analyze_command


def test_analysis_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; import analysis, analysis.report, rg_tracer.cli; "
            "from analysis import open_runs, analyze_runs")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
