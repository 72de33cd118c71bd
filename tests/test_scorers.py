import math

import pytest

from rg_tracer.errors import UserError
from rg_tracer.scorers import ArithmeticScorer, check_scores, load_scorer, run_scorer
from rg_tracer.scorers.arithmetic import final_integer, statement_accuracy


def test_arithmetic_axes_hand_computed():
    s = ArithmeticScorer()
    rows = s.score(["3+4="] * 5, ["7", "3+4=7 so 7", "2+2=5\n8", "abc", "x7"], [{"answer": "7"}] * 5)
    assert [r["correctness"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert rows[1]["reasoning_quality"] == 1.0
    assert rows[2]["reasoning_quality"] == 0.0
    assert rows[0]["reasoning_quality"] == 0.0  # no statements written
    assert rows[3]["format_penalty"] == 1.0  # no integer at all
    assert rows[4]["format_penalty"] == 1.0  # junk glued to the answer
    assert [r["format_penalty"] for r in rows[:3]] == [0.0, 0.0, 0.0]  # each ends in an integer
    assert rows[2]["answer_closeness"] == pytest.approx(1 / 2)
    assert rows[0]["answer_length"] == 1.0


@pytest.mark.parametrize("completion, penalty", [
    ("7", 0.0), ("-7", 0.0), (" 12\n", 0.0), ("so 7", 0.0), ("3+4=7", 0.0), ("3+4 = 7", 0.0),
    ("6%", 1.0), ("8*", 1.0), ("%8", 1.0), ("T88", 1.0), ("18k", 1.0), ("7.", 1.0), ("", 1.0), ("=", 1.0), ("x=7", 1.0), ("(3+4)=7", 0.0),
])
def test_format_penalty_cannot_be_bought_with_junk(completion, penalty):
    row = ArithmeticScorer().score(["3+4="], [completion], [{"answer": "7"}])[0]
    assert row["format_penalty"] == penalty


def test_statement_helpers():
    assert final_integer("a -12 b 30") == 30
    assert final_integer("none") is None
    assert statement_accuracy("1+1=2, 6/3=2, 7%4=3, 2*3=7") == 0.75
    assert statement_accuracy("5/0=1") == 0.0


def test_load_scorer_builtin_and_module_path():
    assert isinstance(load_scorer("arithmetic"), ArithmeticScorer)
    assert isinstance(load_scorer("rg_tracer.scorers.arithmetic:ArithmeticScorer"), ArithmeticScorer)


@pytest.mark.parametrize("spec, message", [
    ("nocolon", "expected 'package.module:ClassName'"),
    ("no_such_module_xyz:Thing", "cannot import"),
    ("rg_tracer.scorers.arithmetic:Missing", "has no attribute 'Missing'"),
    ("rg_tracer.scorers.arithmetic:final_integer", "no score"),
])
def test_load_scorer_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_scorer(spec)


class _TwoArgScorer:
    def score(self, prompts, completions):
        return [{"n": float(len(c))} for c in completions]


def test_run_scorer_without_references_and_checks():
    assert run_scorer(_TwoArgScorer(), ["p", "q"], ["ab", "c"], [{}, {}]) == [{"n": 2.0}, {"n": 1.0}]
    with pytest.raises(UserError, match="returned 1 rows for 2 completions"):
        check_scores([{}], 2)
    with pytest.raises(UserError, match="sample 1, key 'r' is nan"):
        check_scores([{"r": 1.0}, {"r": math.nan}], 2)
