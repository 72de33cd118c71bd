"""Datasets and reward-mixer files: bad input gets a message naming file, line and field."""

import pytest

from rg_tracer.data import load_dataset, resolve_eval_path
from rg_tracer.errors import UserError
from rg_tracer.reward_mixer import check_overlap, load_reward_mixer
from tests.helpers import MIXER, TOY


def test_shipped_dataset_and_heldout_split_are_disjoint():
    train = load_dataset(TOY)
    heldout = load_dataset(resolve_eval_path(TOY, None))
    assert len(train.examples) >= 50
    assert not {e.prompt for e in train.examples} & {e.prompt for e in heldout.examples}
    for e in train.examples:
        a, b = e.row["numbers"]
        assert int(e.answer) == a + b and e.prompt == f"{a}+{b}="


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "1+1=", "answer": "2"}\n{oops\n', r"bad.jsonl:2: not valid JSON"),
    ('{"prompt": "1+1="}\n', r"bad.jsonl:1: missing field 'answer'"),
    ('{"answer": "2"}\n', r"bad.jsonl:1: missing field 'prompt'"),
    ('[1, 2]\n', r"bad.jsonl:1: expected a JSON object"),
    ('{"prompt": {"a": 1}, "answer": "2"}\n', r"bad.jsonl:1: field 'prompt' must be a string"),
    ('{"id": "x", "prompt": "a", "answer": 1}\n{"id": "x", "prompt": "b", "answer": 2}\n', r"bad.jsonl:2: duplicate id 'x'"),
    ("\n\n", r"no rows"),
    ('{"prompt": "1+1=", "answer": "' + "9" * 400 + '"}\n', r"bad.jsonl:1: field 'answer' is a 400-character number"),
    ('{"prompt": "1+1=", "answer": Infinity}\n', r"bad.jsonl:1: not valid JSON \(Infinity is not a JSON number"),
    ('{"prompt": "a\\udfff", "answer": "2"}\n', r"bad.jsonl:1: field 'prompt' holds a lone surrogate"),
])
def test_bad_dataset_lines(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_dataset(path)


def test_numbers_and_escaped_pairs_that_are_fine(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"prompt": "\\ud83d\\ude00 1+1=", "answer": "1e300"}\n{"prompt": "x", "answer": "9e9999 apples"}\n')
    first, second = load_dataset(path).examples
    assert first.prompt == "\U0001F600 1+1=" and first.answer == "1e300" and second.answer == "9e9999 apples"


def test_shipped_mixer_weights():
    mixer = load_reward_mixer(MIXER)
    assert mixer.weights == {"correctness": 1.0, "reasoning_quality": 0.5, "format_penalty": -0.25}
    assert mixer.normalize is False and mixer.default_weight == 0.0


def test_flat_mapping_and_json(tmp_path):
    (tmp_path / "m.json").write_text('{"a": 2, "b": 0}')
    assert load_reward_mixer(tmp_path / "m.json").weights == {"a": 2.0, "b": 0.0}


@pytest.mark.parametrize("content, message", [
    ("- 1\n- 2\n", "expected a mapping"),
    ("weights: {a: high}\n", "weight 'a' must be a finite number"),
    ("weights: {}\n", "non-empty mapping"),
    ("weights: {a: 1}\nnormalise: true\n", "unknown key"),
    ("weights: {a: .nan}\n", "finite number"),
    ("a: [1\n", "not valid YAML"),
])
def test_bad_mixer_files(tmp_path, content, message):
    path = tmp_path / "mixer.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_reward_mixer(path)


def test_mixer_must_name_a_produced_reward():
    mixer = load_reward_mixer(MIXER)
    check_overlap(mixer, {"correctness", "extra"}, "x")
    with pytest.raises(UserError, match="no reward-mixer weight matches"):
        check_overlap(mixer, {"accuracy"}, "x")


def test_characters_the_tokenizer_does_not_know_are_named(tmp_path, tiny_model_dir, capsys):
    from rg_tracer.models import check_context
    from tests.helpers import config

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "3+4=\\u00e9", "answer": "7"}\n{"prompt": "1+1=", "answer": "2"}\n')
    check_context(config(tmp_path, tiny_model_dir("qwen2"), dataset=str(data)))
    err = capsys.readouterr().err
    assert "1 prompt(s) hold characters the tokenizer does not know" in err and "'3+4=\u00e9'" in err
    check_context(config(tmp_path, tiny_model_dir("qwen2")))  # the toy set: nothing to say
    assert capsys.readouterr().err == ""
