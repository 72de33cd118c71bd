"""Property-based tests (hypothesis): feedback mapping, dataset loader, log writer round trip."""

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from rg_tracer.data import load_dataset
from rg_tracer.errors import UserError
from rg_tracer.runtime.feedback_adapter import make_gepa_feedback
from rg_tracer.runtime.log_writer import JsonlLogger
from rg_tracer.scorers import FeedbackMappingConfig
from rg_tracer.schema import RL_KEYS, validate

keys = st.text(min_size=1, max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
text = st.text(max_size=40)


@given(st.dictionaries(keys, finite, min_size=1, max_size=6), st.data())
def test_feedback_keeps_every_value_and_splits_keys(scores, data):
    tags = tuple(data.draw(st.lists(st.sampled_from(sorted(scores)), unique=True)))
    fb = make_gepa_feedback(scores, FeedbackMappingConfig(tag_keys=tags), meta={"id": "p", "task": "t"})
    assert fb.tags == {k: scores[k] for k in tags}
    assert fb.rewards == {k: v for k, v in scores.items() if k not in tags}
    assert fb.meta == {"task_id": "t", "prompt_id": "p"}


@given(st.dictionaries(keys, finite, max_size=4), keys, st.sampled_from([math.nan, math.inf, -math.inf]))
def test_feedback_rejects_any_non_finite_reward(scores, bad_key, bad):
    scores = {**scores, bad_key: bad}
    try:
        make_gepa_feedback(scores, FeedbackMappingConfig(), sample="s")
    except UserError as exc:
        assert repr(bad_key) in str(exc)
    else:
        raise AssertionError("non-finite value accepted")


rows = st.lists(st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=30), "answer": st.one_of(text, st.integers()),
                                       "task": text}), min_size=1, max_size=8)


@settings(max_examples=50)
@given(rows)
def test_dataset_loader_reads_back_what_was_written(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("ds") / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = load_dataset(path).examples
    assert [(e.prompt, e.answer, e.task) for e in loaded] == [(r["prompt"], str(r["answer"]), r["task"]) for r in rows]
    assert len({e.id for e in loaded}) == len(rows)


sample = st.fixed_dictionaries({
    "rewards": st.dictionaries(keys, finite, max_size=3), "tags": st.dictionaries(keys, finite, max_size=2),
    "verifier": st.just({}), "meta": st.fixed_dictionaries({"task_id": text, "prompt_id": text}),
    "abstained": st.booleans(),
})


@settings(max_examples=50)
@given(st.lists(sample, max_size=4), st.dictionaries(st.sampled_from(RL_KEYS), finite, min_size=len(RL_KEYS)),
       st.lists(st.text(max_size=50), min_size=4, max_size=4))
def test_log_writer_round_trip(tmp_path_factory, gepa, rl, completions):
    generation = [{"prompt_id": s["meta"]["prompt_id"], "completion_id": f"c{i}", "prompt_tokens": 1,
                   "completion_tokens": 2, "truncated": False, "completion": completions[i]}
                  for i, s in enumerate(gepa)]
    path = tmp_path_factory.mktemp("log") / "train.jsonl"
    logger = JsonlLogger(path)
    written = logger.write("step", step=1, rl=rl, gepa=gepa, generation=generation, curriculum={}, safety={})
    logger.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    assert validate(json.loads(lines[0])) == json.loads(json.dumps(written))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.dictionaries(keys, finite, min_size=1, max_size=3), min_size=1, max_size=4),
       st.lists(st.text(max_size=30), min_size=4, max_size=4))
def test_log_writer_to_ingest_round_trip(tmp_path_factory, reward_rows, completions):
    from analysis import open_runs

    runs = tmp_path_factory.mktemp("runs")
    logger = JsonlLogger(runs / "r" / "train.jsonl")
    logger.write("run", config={}, versions={}, model={}, dataset={}, seed=0, resumed_from_step=None)
    gepa = [{"rewards": r, "tags": {}, "verifier": {}, "meta": {"task_id": "t", "prompt_id": f"p{i}"},
             "abstained": False} for i, r in enumerate(reward_rows)]
    generation = [{"prompt_id": f"p{i}", "completion_id": f"p{i}#0", "prompt_tokens": 1, "completion_tokens": 1,
                   "truncated": False, "completion": completions[i]} for i in range(len(gepa))]
    logger.write("step", step=1, rl=dict.fromkeys(RL_KEYS, 0.5), gepa=gepa, generation=generation,
                 curriculum={}, safety={})
    logger.close()
    with open_runs(runs) as db:
        axes = db.sql("SELECT sample_idx, axis, value FROM sample_axes WHERE kind = 'reward'").rows()
        texts = db.sql("SELECT sample_idx, completion FROM samples ORDER BY sample_idx").rows()
    assert sorted(axes) == sorted((i, k, v) for i, r in enumerate(reward_rows) for k, v in r.items())
    assert texts == [(i, completions[i]) for i in range(len(gepa))]
