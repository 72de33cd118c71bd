"""A hostile corpus: ingest and report keep working on the rest and say what they skipped.

``CORPUS`` holds one hostile line per case; ``test_corpus_counts`` prints how many were tried, how
many are clean errors (the line reported with its field, the rest stored) and how many recovered.
The other tests: disk full during ingest, FIFOs and /dev/zero as logs, a step far beyond the
others, too many reward axes, and report paths two runs share.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from analysis import IngestError, ingest, open_runs
from analysis.db import _load
from rg_tracer.cli import cli
from tests.analysis.synth import end_record, eval_record, run_record, step_record, upstream_step, write_log
from tests.helpers import assert_one_line_error


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


# -- the corpus: one hostile line per run, between good lines; other runs, sorted after, ingest too -------------
NEST = "[" * 100_000 + "]" * 100_000


def _dump(record: dict) -> str:
    return json.dumps(record)


def _step(step=3, **changes) -> dict:
    record = step_record(step, [{"correctness": 0.5}], completions=["seven"])
    record.update(changes)
    return record


def _swap(record: dict, old: str, new: str) -> str:
    text = _dump(record)
    assert old in text, old
    return text.replace(old, new, 1)


def _without(record: dict, *path: str) -> dict:
    record = json.loads(json.dumps(record))
    target = record
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return record


def _upstream() -> dict:
    record = upstream_step(3, [{"correctness": 0.5}])
    record["rl"] = {"loss/total": 0.25, "kl/value": 0.02, "loss/policy": 0.1, "grad_norm": 1.5, "learning_rate": 1e-5,
                    "entropy": 2.0}
    return record


#: (case, hostile line, expected): a field name means a clean error (the line is reported with that field and
#: skipped); "recovered" means the line is stored (maybe with a note) and nothing is reported bad.
CORPUS = [
    ("eval_n_1e20", _swap(eval_record(2, {"correctness": 1.0}), '"n": 8', '"n": 100000000000000000000'), "n"),
    ("resumed_float_1e20", _swap(run_record(), '"resumed_from_step": null', '"resumed_from_step": 1e20'),
     "resumed_from_step"),
    ("resumed_int_1e20", _swap(run_record(), '"resumed_from_step": null', '"resumed_from_step": 100000000000000000000'),
     "resumed_from_step"),
    ("surrogate_completion", _swap(_step(), '"seven"', '"\\ud800"'), "generation[0].completion"),
    ("surrogate_run_model", _swap(run_record(), '"tiny"', '"x\\udfff"'), "model.name_or_path"),
    ("surrogate_axis_name", _swap(_step(), '"correctness"', '"c\\ud800"'), "gepa[0].rewards"),
    ("surrogate_eval_split", _swap(eval_record(2, {"correctness": 1.0}), '"test"', '"\\uDBFF"'), "split"),
    ("nested_line", NEST, "<line>"),
    ("nested_curriculum", _swap(_step(), '"curriculum": {}', '"curriculum": ' + NEST), "<line>"),
    ("nested_run_config", _swap(run_record(), '"config": {"lr": 1e-05}', '"config": {"lr": ' + NEST + "}"), "<line>"),
    ("step_2e63", _dump(_step(2**63 - 1)), "step"),
    ("step_over_bound", _dump(_step(10**12 + 1)), "step"),
    ("step_2e64", _dump(_step(2**64 + 5)), "step"),
    ("step_bool", _dump(_step(True)), "step"),
    ("step_float", _swap(_step(), '"step": 3', '"step": 3.5'), "step"),
    ("int_5000_digits", _swap(_step(), '"step": 3', '"step": ' + "9" * 5000), "<line>"),
    ("eval_step_over_bound", _dump(eval_record(10**13, {"correctness": 1.0})), "step"),
    ("end_step_over_bound", _dump(end_record(10**13)), "step"),
    ("tokens_2e64", _swap(_step(), '"prompt_tokens": 7', '"prompt_tokens": 18446744073709551621'),
     "generation[0].prompt_tokens"),
    ("rl_nan", _swap(_step(), '"kl": 0.0', '"kl": NaN'), "rl.kl"),
    ("curriculum_1e400", _swap(_step(), '"curriculum": {}', '"curriculum": {"x": 1e400}'), "curriculum.x"),
    ("eval_metric_400_digits", _swap(eval_record(2, {"correctness": 1.0}), '"correctness": 1.0',
                                     '"correctness": 1' + "0" * 400), "metrics.correctness"),
    ("not_an_object", "[1, 2, 3]", "<record>"),
    ("empty_object", "{}", "schema"),
    ("unknown_kind", _swap(_step(), '"kind": "step"', '"kind": "bogus"'), "kind"),
    ("unknown_phase", _dump(_step(phase="bogus")), "phase"),
    ("es_phase_without_es", _dump(_step(phase="es")), "es"),
    ("axis_string", _swap(_step(), '"correctness": 0.5', '"correctness": "high"'), "gepa[0].rewards.correctness"),
    ("error_message_is_short", _swap(_step(), '"correctness": 0.5', '"correctness": "' + "x" * 100_000 + '"'),
     "gepa[0].rewards.correctness"),
    # recovered: what the analysis does not need is a note, not a reason to drop the line
    ("step_50M", _dump(_step(50_000_000)), "recovered"),
    ("step_at_bound", _dump(_step(10**12)), "recovered"),
    ("step_zero", _dump(_step(0)), "recovered"),
    ("axis_1e300", _swap(_step(), '"correctness": 0.5', '"correctness": 1e+300'), "recovered"),
    ("run_without_versions", _dump(_without(run_record(), "versions")), "recovered"),
    ("run_config_a_list", _swap(run_record(), '"config": {"lr": 1e-05}', '"config": [1]'), "recovered"),
    ("run_seed_1e20", _swap(run_record(), '"seed": 0', '"seed": 100000000000000000000'), "recovered"),
    ("run_time_a_string", _swap(run_record(), '"time": 1764070000.0', '"time": "yesterday"'), "recovered"),
    ("run_time_400_digits", _swap(run_record(), '"time": 1764070000.0', '"time": 1' + "0" * 400), "recovered"),
    ("curriculum_400_digits", _swap(_step(), '"curriculum": {}', '"curriculum": {"x": 1' + "0" * 400 + "}"),
     "recovered"),  # JSON holds it, and nothing reads it as a float
    ("run_reward_weights_a_string", _swap(run_record(), '"reward_weights": {"correctness": 1.0}',
                                          '"reward_weights": "equal"'), "recovered"),
    ("rl_key_missing", _dump(_without(_step(), "rl", "clip_ratio")), "recovered"),
    ("sample_tags_missing", _dump(_without(_step(), "gepa", 0, "tags")), "recovered"),
    ("eval_n_missing", _dump(_without(eval_record(2, {"correctness": 1.0}), "n")), "recovered"),
    ("upstream_metric_names", _dump(_upstream()), "recovered"),
    ("duplicate_keys", _swap(_step(), '"kl": 0.0', '"kl": 9.0, "kl": 0.0'), "recovered"),
]


def _corpus_log(hostile: str) -> list[str]:
    return [_dump(run_record()), _dump(step_record(1, [{"correctness": 0.0}])), hostile,
            _dump(step_record(2, [{"correctness": 1.0}]))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    runs = tmp_path_factory.mktemp("corpus") / "runs"
    for i, (case, hostile, _) in enumerate(CORPUS):
        write_log(runs / f"{i:02d}_{case}" / "train.jsonl", _corpus_log(hostile), check=False)
    write_log(runs / "zz_after" / "train.jsonl", [run_record(), step_record(1, [{"correctness": 1.0}])])
    result = ingest(runs, progress=False)
    return runs, result, {f.run_id: f for f in result.files}


@pytest.mark.parametrize("index", range(len(CORPUS)), ids=[c[0] for c in CORPUS])
def test_corpus_line(corpus, index):
    runs, _, files = corpus
    case, hostile, expected = CORPUS[index]
    report = files[f"{index:02d}_{case}"]
    with open_runs(runs, ingest_new=False) as db:
        steps = db.sql("SELECT step FROM steps WHERE run_id = ? ORDER BY step", [report.run_id])["step"].to_list()
    restart = expected == "recovered" and '"kind": "run"' in hostile  # a fresh start: step 1 is superseded
    assert ({2} if restart else {1, 2}) <= set(steps)  # the good lines either side are stored
    if expected == "recovered":
        assert report.n_errors == 0, report.errors
    else:
        assert [(e.line, e.field) for e in report.errors] == [(3, expected)], report.errors
        message = report.errors[0].message
        assert "\n" not in message and len(message) < 300 and "Traceback" not in message
        assert message.encode("utf-8")  # printable: no lone surrogate in what is shown


def test_corpus_counts(corpus):
    runs, result, files = corpus
    assert files["zz_after"].n_errors == 0 and files["zz_after"].records == 2  # a log sorted after them all
    tried = len(CORPUS)
    clean = sum(1 for i, (case, _, _) in enumerate(CORPUS) if files[f"{i:02d}_{case}"].n_errors == 1)
    recovered = sum(1 for i, (case, _, _) in enumerate(CORPUS) if files[f"{i:02d}_{case}"].n_errors == 0)
    print(f"hostile corpus: tried {tried}, clean error {clean}, recovered {recovered}")
    assert (clean, recovered) == (sum(c[2] != "recovered" for c in CORPUS), sum(c[2] == "recovered" for c in CORPUS))


def test_recovered_values_and_notes(corpus):
    """Upstream names map onto rg-tracer's; duplicate keys: the last wins; missing optional fields are notes."""
    runs, _, files = corpus
    with open_runs(runs, ingest_new=False) as db:
        def metrics(case):
            run_id = next(r for r in files if r.endswith("_" + case))
            frame = db.sql("SELECT metric, value FROM rl_metrics WHERE run_id = ? AND step = 3", [run_id])
            return dict(frame.iter_rows())
        assert metrics("upstream_metric_names") == {"loss": 0.25, "kl": 0.02, "policy_loss": 0.1, "grad_norm": 1.5,
                                                    "lr": 1e-5, "entropy": 2.0}
        assert metrics("duplicate_keys")["kl"] == 0.0
        assert "clip_ratio" not in metrics("rl_key_missing")
        versions = db.sql("SELECT versions FROM segments WHERE run_id LIKE '%run_without_versions' AND line = 3")[
            "versions"]
        assert versions.to_list() == ["{}"]
    notes = {case: [n for n in files[f"{i:02d}_{case}"].notes] for i, (case, _, _) in enumerate(CORPUS)}
    assert any(n.field == "versions" for n in notes["run_without_versions"])
    assert any(n.field == "rl.clip_ratio" for n in notes["rl_key_missing"])
    assert notes["step_50M"] == []


@pytest.mark.parametrize("case", ["duplicate_keys", "step_zero", "upstream_metric_names", "rl_key_missing",
                                  "sample_tags_missing", "axis_1e300"])
def test_sql_and_python_paths_store_the_same(tmp_path, monkeypatch, case):
    hostile = dict((c, line) for c, line, _ in CORPUS)[case]
    runs = tmp_path / "runs"
    write_log(runs / "r" / "train.jsonl", _corpus_log(hostile) * 2, check=False)  # each line twice: latest wins
    fast = ingest(runs, tmp_path / "fast.duckdb")
    plan = _load._plan
    monkeypatch.setattr(_load, "_plan", lambda con, chunk, python_all: plan(con, chunk, True))
    slow = ingest(runs, tmp_path / "slow.duckdb")
    assert fast.n_errors == slow.n_errors == 0
    for table in ("steps", "rl_metrics", "samples", "sample_axes"):
        cols = "* EXCLUDE (line)" if table == "steps" else "*"
        query = f"SELECT {cols} FROM {table} ORDER BY ALL"
        with duckdb.connect(str(fast.db_path), read_only=True) as a, duckdb.connect(str(slow.db_path),
                                                                                     read_only=True) as b:
            assert a.execute(query).fetchall() == b.execute(query).fetchall(), table


def test_a_storage_error_aborts_and_a_rerun_ingests_everything(tmp_path, monkeypatch):
    """Disk full mid-ingest: one-line error, no line recorded as bad, offsets kept; the rerun gets all 200 steps."""
    runs = tmp_path / "runs"
    write_log(runs / "r" / "train.jsonl", [run_record()] + [step_record(s, [{"correctness": s / 200}])
                                                            for s in range(1, 201)])
    write = _load._write
    calls = {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if 3 <= calls["n"] <= 8:  # the disk is full for a while, then space comes back
            raise duckdb.IOException('IO Error: Could not write file "rg_tracer.duckdb.wal": No space left on device')
        return write(*args, **kwargs)

    monkeypatch.setattr(_load, "_write", full_disk)
    with pytest.raises(IngestError) as err:
        ingest(runs, chunk_bytes=4096)
    message = str(err.value)
    assert "No space left on device" in message and "train.jsonl" in message and "\n" not in message
    assert "again" in message and "resumes at line" in message
    with open_runs(runs, ingest_new=False) as db:  # the chunks before the failure are kept; nothing is "bad"
        assert 0 < db.sql("SELECT count(*) AS n FROM steps")["n"][0] < 200
        assert db.ingest_errors().is_empty()
    monkeypatch.setattr(_load, "_write", write)
    result = ingest(runs, chunk_bytes=4096)
    assert result.n_errors == 0
    with open_runs(runs, ingest_new=False) as db:
        assert db.sql("SELECT count(*) AS n FROM steps")["n"][0] == 200
        assert db.ingest_errors().is_empty()


def test_a_storage_error_is_a_one_line_cli_error(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    write_log(runs / "r" / "train.jsonl", [run_record(), step_record(1, [{"correctness": 1.0}])])

    def full_disk(*args, **kwargs):
        raise duckdb.IOException("IO Error: No space left on device")

    monkeypatch.setattr(_load, "_write", full_disk)
    from rg_tracer.cli.analyze import ingest_command

    assert_one_line_error(CliRunner().invoke(ingest_command, [str(runs)]), "No space left on device")


_SUBPROCESS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
sys.path.insert(0, sys.argv[2])
from analysis import ingest
result = ingest(sys.argv[1], progress=False)
print(sorted((f.run_id, f.records) for f in result.files))
print(result.notes)
"""


def test_fifos_and_device_links_are_skipped_with_a_note(tmp_path):
    runs = tmp_path / "runs"
    write_log(runs / "ok" / "train.jsonl", [run_record(), step_record(1, [{"correctness": 1.0}])])
    (runs / "pipe").mkdir()
    os.mkfifo(runs / "pipe" / "train.jsonl")
    (runs / "zero").mkdir()
    os.symlink("/dev/zero", runs / "zero" / "train.jsonl")
    assert stat.S_ISFIFO(os.stat(runs / "pipe" / "train.jsonl").st_mode)
    repo = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS, str(runs), repo], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files, notes = proc.stdout.splitlines()
    assert files == "[('ok', 2)]"
    assert "pipe/train.jsonl" in notes and "zero/train.jsonl" in notes and "not a regular file" in notes


def test_too_many_reward_axes_is_a_clear_note(tmp_path):
    from analysis import analyze_runs

    runs = tmp_path / "runs"
    wide = [{f"axis{i:04d}": float((s + i) % 3) for i in range(600)} for s in range(2)]
    write_log(runs / "wide" / "train.jsonl", [run_record()] + [step_record(s, wide) for s in range(1, 6)])
    write_log(runs / "ok" / "train.jsonl", [run_record()] + [step_record(s, [{"correctness": 1.0}])
                                                             for s in range(1, 6)])
    index = analyze_runs(runs, tmp_path / "rep", progress=False)
    page = index.read_text(encoding="utf-8")
    assert "wide" in page and "600 reward axes" in page and "512" in page
    with open_runs(runs, ingest_new=False) as db:
        assert db.sql("SELECT DISTINCT run_id FROM fitness")["run_id"].to_list() == ["ok"]


def test_colliding_report_paths_are_refused(tmp_path):
    runs = tmp_path / "runs"
    write_log(runs / "a" / "train.jsonl", [run_record(), step_record(1, [{"correctness": 1.0}])])
    write_log(runs / "a" / "index.html" / "train.jsonl", [run_record(), step_record(1, [{"correctness": 1.0}])])
    out = CliRunner().invoke(cli, ["analyze", str(runs), "--out", str(tmp_path / "rep")])
    assert out.exit_code == 1 and "Traceback" not in out.output, out.output
    error = out.output.strip().splitlines()[-1]  # after the ingest summary lines
    assert error.startswith("Error: runs 'a' and 'a/index.html' collide"), error
    assert not (tmp_path / "rep").exists()  # refused before writing anything


def test_correlations_cost_logged_steps_not_the_largest_step():
    """One step at 50,000,000 after steps 1..120: a few dozen grid points more, not 50M (was 381 MiB per series)."""
    import tracemalloc

    import numpy as np
    import polars as pl

    from analysis.correlations import correlate

    rng = np.random.default_rng(0)
    steps = [*range(1, 121), 50_000_000]
    walk = np.cumsum(rng.normal(size=len(steps)))
    fitness = pl.DataFrame({"run_id": "r", "kind": "reward", "axis": "c", "step": steps, "mean": walk})
    metrics = pl.DataFrame({"run_id": "r", "step": steps, "metric": "kl", "value": walk + rng.normal(size=len(steps))})
    correlate(fitness.head(120), metrics.head(120))  # imports and caches: not what is measured
    tracemalloc.start()
    try:
        correlations, _ = correlate(fitness, metrics)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    assert correlations["n"].to_list() == [121]


def test_a_step_at_the_bound_is_analysed(tmp_path):
    from analysis import analyze_runs
    from rg_tracer.schema import MAX_STEP
    from tests.analysis.synth import known_run

    runs = tmp_path / "runs"
    records = known_run(steps=120, change_at=60)
    far = [{"correctness": 0.8, "format": 1.0, "noise": 0.5, "style": 5.0}] * 8
    records[-1:-1] = [step_record(MAX_STEP // 2, far), step_record(MAX_STEP, far)]  # the cadence sees them too
    write_log(runs / "far" / "train.jsonl", records)
    index = analyze_runs(runs, tmp_path / "rep", progress=False)
    assert index.is_file() and (tmp_path / "rep" / "far" / "index.html").is_file()
    with open_runs(runs, ingest_new=False) as db:
        assert db.sql("SELECT max(step) AS s FROM steps")["s"][0] == MAX_STEP
