"""End to end: the report finds the planted structure, and escapes what it shows."""

from __future__ import annotations

import json
import re

import duckdb
from synth import run_record, step_record, write_log

from analysis import analyze_runs
from analysis.db import _load


def test_summary_json_finds_the_planted_structure(known_report):
    summary = json.loads((known_report["out"] / "exp1" / "summary.json").read_text())
    assert set(summary) == {"run_id", "steps", "last_step", "status", "warnings", "findings", "axes", "lead_lag",
                            "grokking"}
    assert summary["warnings"] == []  # a healthy run: no warning
    assert summary["run_id"] == "exp1" and summary["steps"] == 240
    axes = summary["axes"]
    assert set(axes) == {"correctness", "format", "noise", "style", "tag/completion_length"}
    (jump,) = axes["correctness"]["transitions"]
    assert {"onset_step", "end_step", "before", "after", "shape", "size", "p_value", "interval"} <= set(jump)
    assert jump["shape"] == "jump" and jump["interval"][0] <= 120 <= jump["interval"][1] and jump["p_value"] < 1e-6
    assert abs(jump["onset_step"] - 120) <= 2 and abs(jump["end_step"] - 120) <= 2
    assert abs(jump["before"] - 0.2) < 0.02 and abs(jump["after"] - 0.8) < 0.02
    assert axes["format"]["transitions"] == [] and axes["noise"]["transitions"] == []
    assert axes["format"]["final_mean"] == 1.0
    top = summary["lead_lag"][0]
    assert {"metric", "axis", "best_lag", "corr", "p_adj", "relation"} <= set(top)
    assert (top["metric"], top["axis"], top["best_lag"]) == ("grad_norm", "style", 4)
    assert top["corr"] > 0.9 and top["p_adj"] < 1e-6
    findings = summary["findings"]  # in step order, then the couplings; noise is not listed
    assert [f["kind"] for f in findings][:1] == ["jump"] and findings[0]["axis"] == "correctness"
    assert "correctness jumped from 0.2" in findings[0]["text"]
    assert not any(f.get("axis") in ("noise", "format") for f in findings)
    assert any(f["kind"] == "lead" and f["metric"] == "grad_norm" and f["lag"] == 4 for f in findings)
    page = (known_report["out"] / "exp1" / "index.html").read_text()
    assert page.index("What happened") < page.index("Reward axes") and "correctness jumped" in page
    other = json.loads((known_report["out"] / "sweep" / "lr-2" / "summary.json").read_text())
    assert other["lead_lag"][0]["best_lag"] == 2


def test_pages_link_and_stay_offline(known_report):
    out = known_report["out"]
    index = known_report["index"].read_text()
    assert known_report["index"] == out / "index.html"
    assert 'href="exp1/index.html"' in index and 'href="sweep/lr-2/index.html"' in index
    run_page = (out / "sweep" / "lr-2" / "index.html").read_text()
    assert 'href="../../index.html"' in run_page
    for page in (index, run_page):
        assert "<script" not in page and "http://" not in page and "https://" not in page
        for src in re.findall(r'src="([^"]+)"', page):
            base = out if page is index else out / "sweep" / "lr-2"
            assert (base / src).is_file()


def test_completions_are_escaped(known_report):
    page = (known_report["out"] / "exp1" / "index.html").read_text()
    assert "Samples around transitions" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<b>step" not in page


def test_derived_tables_are_stored(known_report):
    con = duckdb.connect(str(known_report["runs"] / "rg_tracer.duckdb"), read_only=True)
    try:
        got = con.execute("""SELECT onset_step FROM transitions
                             WHERE run_id = 'exp1' AND axis = 'correctness'""").fetchall()
        assert [abs(r[0] - 120) <= 2 for r in got] == [True]
        assert con.execute("SELECT count(DISTINCT lag) FROM lead_lag").fetchall() == [(51,)]  # --max-lag 25
        cols = {r[0] for r in con.execute("DESCRIBE fitness").fetchall()}
        assert {"run_id", "step", "kind", "axis", "n", "mean", "std", "ema", "slope", "z"} <= cols
    finally:
        con.close()


def test_hostile_names_are_escaped_everywhere(tmp_path):
    runs = tmp_path / "runs"
    evil = '<img src=x onerror="alert(1)">'
    records = [run_record()] + [
        step_record(s, [{evil: float(s >= 10), "ok": 1.0}] * 2, tasks=[evil, evil],
                    completions=["</pre><script>steal()</script>"] * 2)
        for s in range(1, 21)
    ]
    write_log(runs / "a&b" / "train.jsonl", records)
    index = analyze_runs(runs, tmp_path / "out")
    pages = [index.read_text(), (tmp_path / "out" / "a&b" / "index.html").read_text()]
    for page in pages:
        assert "<img src=x" not in page and "<script>" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in pages[1]
    assert 'href="a%26b/index.html"' in pages[0]


def test_run_with_zero_steps_still_reports(tmp_path):
    runs = tmp_path / "runs"
    write_log(runs / "fresh" / "train.jsonl", [run_record()])
    index = analyze_runs(runs, tmp_path / "out")
    page = (tmp_path / "out" / "fresh" / "index.html").read_text()
    assert "No sampled completions (no steps yet" in page
    summary = json.loads((tmp_path / "out" / "fresh" / "summary.json").read_text())
    assert summary["grokking"]["status"] == "no_evals"
    del summary["grokking"]
    assert summary == {"run_id": "fresh", "steps": 0, "last_step": None, "status": "unfinished",
                       "warnings": [], "findings": [], "axes": {}, "lead_lag": []}
    assert "fresh" in index.read_text()


def test_fast_path_takes_the_step_lines(runs_dir, monkeypatch):
    """Guard the speed: only run/eval/end lines may take the per-line Python path."""
    from synth import known_run

    seen = []
    read = _load.read_python_lines
    monkeypatch.setattr(_load, "read_python_lines", lambda chunk, idx: seen.extend(idx) or read(chunk, idx))
    records = known_run(steps=80)
    write_log(runs_dir / "r" / "train.jsonl", records)
    from analysis import ingest

    assert ingest(runs_dir).n_errors == 0
    assert len(seen) == sum(1 for r in records if r["kind"] != "step")


def test_unchanged_runs_are_not_rendered_again(tmp_path):
    from synth import append_lines, known_run

    runs = tmp_path / "runs"
    log = write_log(runs / "a" / "train.jsonl", known_run(steps=30, change_at=15))
    write_log(runs / "b" / "train.jsonl", known_run(steps=30, change_at=15))
    analyze_runs(runs, tmp_path / "out")
    pages = {r: tmp_path / "out" / r / "axes.png" for r in "ab"}
    for p in pages.values():
        p.write_bytes(b"stale")  # would survive only if the page was not rewritten
    append_lines(log, [step_record(31, [{"correctness": 0.5}])])
    analyze_runs(runs, tmp_path / "out")
    assert pages["a"].read_bytes().startswith(b"\x89PNG")  # a changed: rendered again
    assert pages["b"].read_bytes() == b"stale"  # b did not
