"""A hostile corpus: ingest and report keep working on the rest and say what they skipped."""

import json

from click.testing import CliRunner

from analysis import ingest, open_runs
from rg_tracer.cli import cli
from tests.analysis.synth import run_record, step_record, write_log


def test_hostile_lines_do_not_stop_ingest_or_leak_into_html(tmp_path):
    runs = tmp_path / "runs"
    script = '<script>alert("x")</script>'
    odd_axis = 'line\nbreak "quoted" ünï <b>'
    huge = step_record(3, [{"correctness": 1.0}], completions=["x" * 8_000_000])
    hostile = [
        run_record(),
        step_record(1, [{"correctness": 0.0, odd_axis: 1.0}], completions=[script]),
        "[" * 100_000 + "]" * 100_000,  # deeply nested JSON
        json.dumps(huge),
        '{"schema": "rg-tracer/2", "kind": "step", "step": 4, "rl": "fast"}',  # wrong type for a known field
        step_record(2, [{"correctness": 1.0}]),
        step_record(2, [{"correctness": 0.5}]),  # duplicate step: the later wins
    ]
    path = write_log(runs / "r" / "train.jsonl", [r if isinstance(r, str) else json.dumps(r) for r in hostile],
                     check=False)
    with open(path, "ab") as f:
        f.write(b'{"schema": "rg-tracer/2", "kind": "step", "step": 5, "comp\xff\xfe": 1}\n')
    result = ingest(runs)
    report = result.files[0]
    assert {e.line for e in report.errors} == {3, 5, 8}
    with open_runs(runs, ingest_new=False) as db:
        step2 = db.sql("SELECT value FROM sample_axes WHERE step = 2 AND axis = 'correctness'")["value"].to_list()
        odd = db.sql("SELECT value FROM sample_axes WHERE axis = ?", [odd_axis])["value"].to_list()
    assert step2 == [0.5] and odd == [1.0]
    out = CliRunner().invoke(cli, ["analyze", str(runs), "--out", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "rep" / "r" / "index.html").read_text(encoding="utf-8")
    index = (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<script>" not in index
    assert "<b>" not in page
    assert "skipped 3 bad line(s)" in index
