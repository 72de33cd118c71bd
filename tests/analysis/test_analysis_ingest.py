"""Ingest: tables, incremental reads, bad input, resume semantics, run ids."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from synth import (
    append_lines,
    end_record,
    eval_record,
    known_run,
    run_record,
    step_record,
    upstream_step,
    write_log,
)

from analysis import IngestError, ingest, open_runs
from analysis.db import _load


def q(db, sql, params=None):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def rewards(step, n=2, **extra):
    return [{"correctness": step / 10 + i, **extra} for i in range(n)]


def simple_log(steps=5):
    return [run_record()] + [step_record(s, rewards(s), rl={"kl": s / 100}) for s in range(1, steps + 1)]


def test_tables_hold_the_log(runs_dir):
    write_log(runs_dir / "a" / "train.jsonl", known_run(steps=40, change_at=20))
    result = ingest(runs_dir)
    db = result.db_path
    assert db == runs_dir / "rg_tracer.duckdb"
    assert result.files[0].run_id == "a" and result.n_errors == 0
    got = q(db, "SELECT n_steps, first_step, last_step, n_samples, status FROM runs")
    assert got == [(40, 1, 40, 320, "completed")]
    assert q(db, "SELECT count(*) FROM sample_axes WHERE kind = 'reward'") == [(40 * 8 * 4,)]
    assert q(db, "SELECT count(*) FROM sample_axes WHERE kind = 'tag'") == [(40 * 8,)]
    # one sample, checked field by field against what synth wrote
    row = q(db, """SELECT task_id, prompt_id, completion_id, completion_tokens, abstained, completion
                   FROM samples WHERE step = 3 AND sample_idx = 1""")
    assert row == [("sorting", "sorting-0000", "sorting-0000#1", 5, False,
                    "<b>step 3</b> sample 1 <script>alert('x')</script>")]
    assert q(db, "SELECT value FROM sample_axes WHERE step = 7 AND sample_idx = 2 AND axis = 'format'") == [(1.0,)]
    assert q(db, "SELECT value FROM rl_metrics WHERE step = 2 AND metric = 'lr'") == [(1e-5,)]
    assert q(db, "SELECT step, split, axis, value FROM evals ORDER BY axis") == [
        (40, "test", "correctness", 0.8), (40, "test", "format", 1.0)]


def test_second_call_reads_only_appended_lines(runs_dir):
    log = write_log(runs_dir / "r" / "train.jsonl", simple_log(3))
    first = ingest(runs_dir)
    assert first.files[0].new_lines == 4
    again = ingest(runs_dir)
    assert again.files[0].new_lines == 0
    append_lines(log, [step_record(4, rewards(4)), step_record(5, rewards(5))])
    third = ingest(runs_dir)
    assert third.files[0].new_lines == 2
    db = third.db_path
    assert q(db, "SELECT count(*), count(DISTINCT step) FROM steps") == [(5, 5)]
    assert q(db, "SELECT count(*) FROM samples") == [(10,)]


def test_partial_last_line_waits_for_the_next_call(runs_dir):
    log = write_log(runs_dir / "r" / "train.jsonl", simple_log(2))
    text = json.dumps(step_record(3, rewards(3)))
    with open(log, "a") as f:
        f.write(text[:40])  # the writer is mid-line
    result = ingest(runs_dir)
    assert result.n_errors == 0 and result.files[0].new_lines == 3
    assert q(result.db_path, "SELECT max(step) FROM steps") == [(2,)]
    with open(log, "a") as f:
        f.write(text[40:] + "\n")
    result = ingest(runs_dir)
    assert result.n_errors == 0 and result.files[0].new_lines == 1
    assert q(result.db_path, "SELECT count(*), max(step) FROM steps") == [(3, 3)]


def test_upstream_records_are_steps(runs_dir):
    write_log(runs_dir / "up" / "train.jsonl", [upstream_step(s, rewards(s), rl={"kl": 0.5}) for s in (1, 2)])
    result = ingest(runs_dir)
    assert result.n_errors == 0
    db = result.db_path
    assert q(db, "SELECT step, sample_idx, value FROM sample_axes ORDER BY ALL") == [
        (1, 0, 0.1), (1, 1, 1.1), (2, 0, 0.2), (2, 1, 1.2)]
    assert q(db, "SELECT count(*) FROM samples WHERE abstained = false") == [(4,)]
    assert q(db, "SELECT segment, status FROM runs JOIN steps USING (run_id) LIMIT 1") == [(0, "unknown")]


def test_bad_lines_are_reported_and_skipped(runs_dir):
    good = simple_log(6)
    nan_step = json.dumps(step_record(4, rewards(4))).replace('"correctness": 0.4', '"correctness": NaN')
    wrong_type = step_record(5, rewards(5))
    wrong_type["gepa"][1]["rewards"]["correctness"] = "high"
    null_reward = step_record(6, rewards(6))
    null_reward["gepa"][0]["rewards"]["correctness"] = None
    inf_rl = json.dumps(step_record(7, rewards(7), rl={"kl": 0.5})).replace('"kl": 0.5', '"kl": Infinity')
    lines = [*good[:3], "{not json", nan_step, json.dumps(wrong_type), json.dumps(null_reward), inf_rl, *good[3:]]
    log = write_log(runs_dir / "r" / "train.jsonl", lines, check=False)
    result = ingest(runs_dir)
    report = result.files[0]
    assert report.n_errors == 5
    assert [(e.line, e.field) for e in report.errors] == [
        (4, "<line>"), (5, "gepa[0].rewards.correctness"), (6, "gepa[1].rewards.correctness"),
        (7, "gepa[0].rewards.correctness"), (8, "rl.kl")]
    assert "non-finite" in report.errors[1].message
    assert "expected a number" in report.errors[2].message
    # the rest is ingested: steps 1, 2 before the bad lines and 3..6 after them
    assert q(result.db_path, "SELECT list(step ORDER BY step) FROM steps") == [([1, 2, 3, 4, 5, 6],)]
    assert q(result.db_path, "SELECT line, field FROM ingest_errors ORDER BY line")[0] == (4, "<line>")
    assert q(result.db_path, "SELECT bad_lines FROM runs") == [(5,)]
    assert str(log).endswith("train.jsonl")


def test_not_jsonl_and_missing_fields(runs_dir):
    (runs_dir / "junk").mkdir()
    (runs_dir / "junk" / "train.jsonl").write_bytes(b"id,value\n1,2\n\xff\xfe\n")
    missing = step_record(1, rewards(1))
    del missing["gepa"][0]["tags"]  # the other sample still has tags, so only SQL's NULL check sees it
    write_log(runs_dir / "ok" / "train.jsonl", [json.dumps(missing), json.dumps(step_record(2, rewards(2)))],
              check=False)
    result = ingest(runs_dir)
    junk, ok = sorted(result.files, key=lambda f: f.run_id)
    assert junk.records == 0 and junk.n_errors == 3
    assert "not UTF-8" in junk.errors[2].message
    # a sample without tags is read with {} and noted (the analysis needs none), not skipped
    assert ok.n_errors == 0 and [(n.line, n.field) for n in ok.notes] == [(1, "gepa[0].tags")]
    assert q(result.db_path, "SELECT list(step ORDER BY step) FROM steps WHERE run_id = 'ok'") == [([1, 2],)]
    assert q(result.db_path, "SELECT line, field, lines FROM ingest_notes WHERE run_id = 'ok'") == [
        (1, "gepa[0].tags", 1)]


def test_empty_runs_dir_is_a_clear_error(runs_dir):
    with pytest.raises(IngestError, match="no \\*.jsonl logs under"):
        ingest(runs_dir)
    assert list(runs_dir.iterdir()) == []  # no database left behind


def test_run_with_zero_steps(runs_dir):
    write_log(runs_dir / "fresh" / "train.jsonl", [run_record()])
    result = ingest(runs_dir)
    assert q(result.db_path, "SELECT n_steps, status, n_segments FROM runs") == [(0, "unfinished", 1)]


def test_awkward_names_and_late_keys(runs_dir):
    odd = ['it\'s "odd"', "select * from runs; --", "a b.c", "Ünï", "$x$"]
    early = [step_record(s, [{"correctness": 1.0}]) for s in (1, 2)]
    late = [step_record(s, [{"correctness": 1.0, **{name: float(i) for i, name in enumerate(odd)}}]) for s in (3, 4)]
    write_log(runs_dir / "r" / "train.jsonl", [*early, *late])
    result = ingest(runs_dir, chunk_bytes=600)  # several chunks: the new keys arrive in a later one
    assert result.n_errors == 0
    got = q(result.db_path, "SELECT axis, list(value ORDER BY step) FROM sample_axes GROUP BY axis ORDER BY axis")
    assert dict(got) == {"correctness": [1.0] * 4, **{name: [float(i)] * 2 for i, name in enumerate(odd)}}


def test_keys_differing_only_in_case_and_empty_verifier(runs_dir):
    samples = [{"Score": 1.0, "score": 2.0}, {"Score": 3.0, "score": 4.0}]
    write_log(runs_dir / "r" / "train.jsonl", [step_record(1, samples), step_record(2, samples)])
    result = ingest(runs_dir)
    assert result.n_errors == 0
    assert q(result.db_path, "SELECT axis, sum(value) FROM sample_axes GROUP BY axis ORDER BY axis") == [
        ("Score", 8.0), ("score", 12.0)]


def test_resume_supersedes_later_steps_of_earlier_segments(runs_dir):
    first = [run_record()] + [step_record(s, rewards(s)) for s in range(1, 6)] + [eval_record(4, {"correctness": 0.1})]
    second = [run_record(resumed_from_step=3)] + [step_record(s, rewards(s, extra=1.0)) for s in (4, 5)]
    log = write_log(runs_dir / "r" / "train.jsonl", first)
    ingest(runs_dir)
    append_lines(log, second + [eval_record(5, {"correctness": 0.9}), end_record(5)])
    db = ingest(runs_dir).db_path
    assert q(db, "SELECT step, segment FROM steps ORDER BY step") == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert q(db, "SELECT count(*) FROM sample_axes WHERE axis = 'extra'") == [(4,)]  # only segment 2 has it
    assert q(db, "SELECT step, value FROM evals") == [(5, 0.9)]  # the eval at 4 came from segment 1
    assert q(db, "SELECT n_segments, status, n_steps FROM runs") == [(2, "completed", 5)]


def test_resume_in_one_chunk_and_duplicate_steps(runs_dir):
    records = [run_record()] + [step_record(s, rewards(s)) for s in (1, 2, 3, 4)]
    records += [step_record(2, rewards(2, extra=7.0))]  # step 2 logged again: latest wins
    records += [run_record(resumed_from_step=2), step_record(3, rewards(3, extra=9.0))]
    write_log(runs_dir / "r" / "train.jsonl", records)
    db = ingest(runs_dir).db_path
    assert q(db, "SELECT step, segment, line FROM steps ORDER BY step") == [(1, 1, 2), (2, 1, 6), (3, 2, 8)]
    assert q(db, "SELECT step, value FROM sample_axes WHERE axis = 'extra' AND sample_idx = 0 ORDER BY step") == [
        (2, 7.0), (3, 9.0)]


def test_rewritten_log_is_read_again(runs_dir):
    log = write_log(runs_dir / "r" / "train.jsonl", simple_log(5))
    ingest(runs_dir)
    write_log(log, simple_log(2))  # a new run in the same place
    result = ingest(runs_dir)
    assert result.files[0].restarted
    assert q(result.db_path, "SELECT count(*) FROM steps") == [(2,)]


def test_run_ids(runs_dir):
    write_log(runs_dir / "train.jsonl", simple_log(1))
    write_log(runs_dir / "sweep" / "lr1" / "train.jsonl", simple_log(1))
    write_log(runs_dir / "sweep" / "lr1" / "extra.jsonl", simple_log(1))
    write_log(runs_dir / "sweep" / "lr1.jsonl", simple_log(1))  # clashes with the directory's id
    result = ingest(runs_dir)
    assert sorted(f.run_id for f in result.files) == ["runs", "sweep/lr1", "sweep/lr1.jsonl", "sweep/lr1/extra"]
    assert len(q(result.db_path, "SELECT * FROM runs")) == 4


def test_sql_path_matches_python_path(runs_dir, tmp_path, monkeypatch):
    """The SQL fast path and the validating Python path store the same rows."""
    records = known_run(steps=30, change_at=10)
    records.insert(5, upstream_step(99, rewards(99)))
    write_log(runs_dir / "r" / "train.jsonl", records)
    fast = ingest(runs_dir, tmp_path / "fast.duckdb").db_path
    plan = _load._plan
    monkeypatch.setattr(_load, "_plan", lambda con, chunk, python_all: plan(con, chunk, True))
    slow = ingest(runs_dir, tmp_path / "slow.duckdb").db_path
    for table in ("steps", "rl_metrics", "samples", "sample_axes", "evals", "segments"):
        cols = "* EXCLUDE (line)" if table in ("steps", "segments") else "*"
        query = f"SELECT {cols} FROM {table} ORDER BY ALL"
        assert q(fast, query) == q(slow, query), table


def test_a_record_sql_cannot_store_costs_only_its_line(runs_dir):
    big = step_record(1, rewards(1))
    big["step"] = 2**63  # valid JSON, beyond BIGINT, and beyond the schema's MAX_STEP
    write_log(runs_dir / "r" / "train.jsonl", [step_record(2, rewards(2)), big, step_record(3, rewards(3))],
              check=False)
    result = ingest(runs_dir)
    assert [(e.line, e.field) for e in result.files[0].errors] == [(2, "step")]
    assert q(result.db_path, "SELECT list(step ORDER BY step) FROM steps") == [([2, 3],)]


def test_open_runs_gives_dataframes(runs_dir):
    write_log(runs_dir / "r" / "train.jsonl", simple_log(4))
    with open_runs(runs_dir) as runs:
        assert runs.run_ids() == ["r"]
        stats = runs.step_stats()
        assert stats.filter(stats["step"] == 2)["mean"].to_list() == [pytest.approx(0.7)]  # (0.2 + 1.2) / 2
        assert runs.metrics("r").filter(runs.metrics("r")["metric"] == "kl")["value"].to_list()[:2] == [0.01, 0.02]
        assert runs.samples("r", steps=(2, 3)).height == 4
        assert runs.sql("SELECT count(*) AS n FROM sample_axes WHERE axis = ?", ["correctness"])["n"][0] == 8
        with pytest.raises(ValueError):
            runs.write_table("runs", stats)


REPO = Path(__file__).resolve().parents[2]


def test_the_trainers_example_log_ingests_cleanly(runs_dir):
    import subprocess
    import sys

    example = runs_dir / "minimal" / "train.jsonl"
    example.parent.mkdir()
    subprocess.run([sys.executable, "examples/dapo_hybrid_minimal.py", str(example)], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    steps = sum(json.loads(line).get("kind") == "step" for line in example.read_text().splitlines() if line.strip())
    result = ingest(runs_dir)
    assert result.n_errors == 0
    assert q(result.db_path, "SELECT n_steps FROM runs") == [(steps,)]


def test_conflicting_types_behind_an_empty_shape(runs_dir):
    """{} in one sample and a list in another merge to the same shape as all-{}: still caught."""
    clash = step_record(2, rewards(2))
    clash["gepa"][1]["verifier"] = [1.0]
    write_log(runs_dir / "r" / "train.jsonl",
              [json.dumps(step_record(1, rewards(1))), json.dumps(clash), json.dumps(step_record(3, rewards(3)))],
              check=False)
    result = ingest(runs_dir)
    assert [(e.line, e.field) for e in result.files[0].errors] == [(2, "gepa[1].verifier")]
    assert q(result.db_path, "SELECT list(step ORDER BY step) FROM steps") == [([1, 3],)]


def test_log_paths_are_absolute_so_the_database_reads_from_anywhere(runs_dir, monkeypatch):
    write_log(runs_dir / "r" / "train.jsonl", known_run(steps=5))
    monkeypatch.chdir(runs_dir.parent)
    ingest(Path(runs_dir.name))  # relative, as `rg-tracer ingest runs/` from the repository root
    monkeypatch.chdir(runs_dir / "r")  # elsewhere, as a notebook's kernel is
    with open_runs(runs_dir / "rg_tracer.duckdb") as runs:
        path = Path(runs.runs()["log_path"][0])
    assert path.is_absolute() and path.is_file() and path == (runs_dir / "r" / "train.jsonl").resolve()


def test_datasets_under_a_runs_directory_are_not_runs(runs_dir):
    write_log(runs_dir / "r" / "train.jsonl", known_run(steps=5))
    data = runs_dir / "grokking-data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text('{"prompt": "3-4=", "answer": "30", "id": "m-1"}\n')
    result = ingest(runs_dir)
    assert [f.run_id for f in result.files] == ["r"]
    assert any("grokking-data/train.jsonl: a dataset (prompt/answer rows), not a run log; skipped" in n
               for n in result.notes)


def test_a_page_of_another_report_is_not_overwritten(runs_dir, tmp_path):
    from analysis import analyze_runs

    write_log(runs_dir / "demo" / "dapo" / "train.jsonl", known_run(steps=30))
    analyze_runs(runs_dir / "demo", tmp_path / "reports" / "demo")  # as make demo does
    page = tmp_path / "reports" / "demo" / "dapo" / "index.html"
    before = page.read_bytes()
    with pytest.raises(IngestError, match=r"holds a page of the report in .*reports/demo.*choose another --out"):
        analyze_runs(runs_dir, tmp_path / "reports")  # runs/ into reports/: run demo/dapo lands on that page
    assert page.read_bytes() == before
    analyze_runs(runs_dir, tmp_path / "reports" / "all")  # elsewhere: fine
    analyze_runs(runs_dir / "demo", tmp_path / "reports" / "demo")  # and the demo's own report again
