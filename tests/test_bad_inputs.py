"""Hostile inputs, as a user (or a file) hands them to the command line.

Every case of :data:`CORPUS` must end as ONE line naming the file/line/field/option and the
fix, exit status 1, no traceback, and nothing written where the command would write.
:data:`ACCEPTED` lists inputs that used to fail or be misread and are now read as meant.
docs/reliability.md ("Inputs and options") gives the counts.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rg_tracer.cli import cli
from rg_tracer.dapo.config import TrainConfig
from rg_tracer.models import TinyModelSpec, init_model
from tests.helpers import MIXER, REPO, TOY, assert_one_line_error, invoke, read_log

BIG_SEED = str(2**70)  # 1180591620717411303424

TRAIN = ["train", "--model", "{model}", "--dataset", TOY, "--reward-mixer", MIXER, "--output-dir", "{out}",
         "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "3", "--max-steps", "1", "--eval-every", "0",
         "--threads", "1", "--no-progress"]
ES = ["eggroll", "--model", "{model}", "--dataset", TOY, "--reward-mixer", MIXER, "--output-dir", "{out}",
      "--population", "4", "--prompts", "2", "--generations", "1", "--max-new-tokens", "3", "--eval-every", "0",
      "--threads", "1", "--no-progress"]
DATA = ["data", "addition", "--out", "{out}"]

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


class _Evil:
    """A pickle that would create a marker file if it were ever executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# (case id, item of the brief, command line, what the one line must say); {names} are files built below.
CORPUS = [
    # 1. accepted at start, then crashing the run
    ("answer-400-digits", 1, TRAIN + ["--dataset", "{answer_400}"], "field 'answer' is a 400-character number"),
    ("answer-5000-digit-json-integer", 1, TRAIN + ["--dataset", "{answer_5000}"], "a number has more than 4300 digits"),
    ("answer-NaN-literal", 1, TRAIN + ["--dataset", "{nan_row}"], "NaN is not a JSON number"),
    ("lone-surrogate-prompt", 1, TRAIN + ["--dataset", "{surrogate}"], "field 'prompt' holds a lone surrogate"),
    ("lone-surrogate-extra-field", 1, ES + ["--dataset", "{surrogate_note}"], "field 'note' holds a lone surrogate"),
    ("row-nested-100k-deep", 1, TRAIN + ["--dataset", "{deep_row}"], ":1: not valid JSON"),
    ("entropy-coef-inf", 1, TRAIN + ["--entropy-coef", "inf"], "--entropy-coef inf must be a finite number"),
    ("grokfast-lambda-inf", 1, TRAIN + ["--grokfast-lambda", "inf"], "--grokfast-lambda inf must be a finite number"),
    ("kl-coef-nan", 1, TRAIN + ["--kl-coef", "nan"], "--kl-coef nan must be a finite number"),
    ("temperature-1e-300", 1, TRAIN + ["--temperature", "1e-300"], "--temperature 1e-300 must be 0 (greedy) or at least"),
    ("es-temperature-1e-300", 1, ES + ["--temperature", "1e-300"], "--temperature 1e-300 must be 0 (greedy) or at least"),
    ("learning-rate-1e30", 1, TRAIN + ["--learning-rate", "1e30"], "--learning-rate 1e+30 must be <= 1.0"),
    ("weight-decay-1e30", 1, TRAIN + ["--weight-decay", "1e30"], "--weight-decay 1e+30 times --learning-rate"),
    ("max-new-tokens-past-positions", 1, TRAIN + ["--model", "{gpt2_16}", "--max-new-tokens", "14"],
     "lower --max-new-tokens to"),
    ("es-max-new-tokens-past-positions", 1, ES + ["--model", "{gpt2_16}", "--max-new-tokens", "14"],
     "lower --max-new-tokens to"),
    ("prompt-longer-than-positions", 1, TRAIN + ["--model", "{gpt2_16}", "--dataset", "{long_prompt}"],
     "drop the prompts longer than 15 tokens"),
    ("sft-answer-past-positions", 1, TRAIN + ["--model", "{gpt2_16}", "--dataset", "{long_answer}", "--sft-steps", "1"],
     "--sft-steps feeds prompt + answer + EOS"),
    ("device-meta", 1, TRAIN + ["--device", "meta"], "--device 'meta': a run cannot compute on meta"),
    ("es-device-meta", 1, ES + ["--device", "meta"], "--device 'meta': a run cannot compute on meta"),
    ("seed-2**70", 3, TRAIN + ["--seed", BIG_SEED], f"--seed {BIG_SEED} must be in [0, 2**64)"),
    # 2. --config files
    ("config-batch-size-4.5", 2, TRAIN + ["--config", "{cfg_batch_float}"], "batch_size: 4.5 is not a whole number"),
    ("config-batch-size-true", 2, TRAIN + ["--config", "{cfg_batch_bool}"], "batch_size: True is not a whole number"),
    ("config-model-123", 2, ["train", "--config", "{cfg_model_int}", "--output-dir", "{out}"],
     "model: 123 is not text; quote it"),
    ("config-seed-abc", 2, TRAIN + ["--config", "{cfg_seed_str}"], "seed: 'abc' is not a whole number"),
    ("config-list-for-scalar", 2, TRAIN + ["--config", "{cfg_list}"], "max_steps takes a single value, not a list"),
    ("config-mapping-for-scalar", 2, TRAIN + ["--config", "{cfg_map}"], "scorer takes a single value, not a mapping"),
    ("config-text-for-float", 2, TRAIN + ["--config", "{cfg_lr_word}"], "learning_rate: 'fast' is not a number"),
    ("config-bool-for-float", 2, TRAIN + ["--config", "{cfg_lr_bool}"], "learning_rate: True is not a number"),
    ("config-text-for-flag", 2, TRAIN + ["--config", "{cfg_flag_str}"], "progress: 'maybe' is not true or false"),
    ("config-null-for-int", 2, TRAIN + ["--config", "{cfg_null}"], "leave batch_size out for its default"),
    ("config-inf-learning-rate", 2, TRAIN + ["--config", "{cfg_inf}"], "--learning-rate inf must be a finite number"),
    ("config-billion-laughs", 2, TRAIN + ["--config", "{cfg_laughs}"], "line 2: aliases (*name) are not allowed"),
    ("config-nested-50k-deep", 2, TRAIN + ["--config", "{cfg_deep}"], "nested too deeply"),
    ("config-5000-digit-seed", 2, TRAIN + ["--config", "{cfg_huge_int}"], "a number has too many digits"),
    ("config-not-utf8", 2, TRAIN + ["--config", "{cfg_binary}"], "not UTF-8 text"),
    ("config-over-1MiB", 2, TRAIN + ["--config", "{cfg_big}"], "larger than 1 MiB"),
    ("config-a-list", 2, TRAIN + ["--config", "{cfg_top_list}"], "expected a mapping of option -> value, got list"),
    ("config-bad-yaml", 2, TRAIN + ["--config", "{cfg_syntax}"], "line 2: mapping values are not allowed here"),
    ("es-config-sigma-text", 2, ES + ["--config", "{cfg_sigma_word}"], "sigma: 'big' is not a number"),
    # 3. rg-tracer data / init-model
    ("data-count-0", 3, DATA + ["--count", "0"], "--count 0 must be in [1, 1,000,000]"),
    ("data-count-minus-5", 3, DATA + ["--count", "-5"], "--count -5 must be in [1, 1,000,000]"),
    ("data-count-1e9", 3, ["data", "parity", "--out", "{out}", "--n", "40", "--count", "1000000000"],
     "--count 1000000000 must be in [1, 1,000,000]"),
    ("data-digits-5000", 3, DATA + ["--digits", "5000"], "--digits 5000 must be in [1, 300]"),
    ("data-p-100000", 3, ["data", "modular", "--out", "{out}", "--p", "100000"], "--p 100000 must be in [2, 1000]"),
    ("data-parity-n-100000", 3, ["data", "parity", "--out", "{out}", "--n", "100000"], "--n 100000 must be in [1, 1000]"),
    ("data-train-frac-nan", 3, DATA + ["--train-frac", "nan"], "--train-frac nan must be in (0, 1)"),
    ("init-model-seed-2**70", 3, ["init-model", "{out}", "--seed", BIG_SEED], f"--seed {BIG_SEED} must be in [0, 2**64)"),
    ("init-model-seed-minus-1", 3, ["init-model", "{out}", "--seed", "-1"], "--seed -1 must be in [0, 2**64)"),
    # 4. EGGROLL's perturbation scale and non-finite weights
    ("sigma-1e300", 4, ES + ["--sigma", "1e300"], "--sigma 1e+300 must be <= 1.0"),
    ("sigma-inf", 4, ES + ["--sigma", "inf"], "--sigma inf must be a finite number"),
    ("lr-1e308-makes-inf-weights", 4, ES + ["--shaping", "none", "--lr", "1e308", "--sigma", "0.5"],
     "generation 1: the update made weights of"),
    # 5. model directories
    ("malicious-pytorch-model-bin", 5, TRAIN + ["--model", "{evil_model}"],
     "holds pytorch_model.bin but no model.safetensors"),
    ("es-malicious-pytorch-model-bin", 5, ES + ["--model", "{evil_model}"],
     "holds pytorch_model.bin but no model.safetensors"),
    ("corrupt-model-safetensors", 5, TRAIN + ["--model", "{corrupt_model}"], "its safetensors weights are corrupt"),
    ("corrupt-config-json", 5, TRAIN + ["--model", "{bad_config_model}"], "is not a valid JSON file"),
    # 7. fitness export
    ("export-weights-name-no-axis", 7, ["fitness", "export", "{rl_runs}", "--out", "{out}/f.parquet",
                                        "--weights", "{mixer_no_axis}"], "no reward-mixer weight matches"),
]

#: Inputs once refused with a traceback or misread, now read as meant: (case id, YAML, field, value read).
ACCEPTED = [
    ("yaml-1e-3-is-a-string", "learning_rate: 1e-3\n", "learning_rate", 1e-3),
    ("quoted-number-for-float", "kl_coef: '0.5'\n", "kl_coef", 0.5),
    ("quoted-number-for-int", "seed: '7'\n", "seed", 7),
    ("whole-float-for-int", "batch_size: 4.0\n", "batch_size", 4),
    ("betas-as-a-list", "adam_betas: [0.9, 0.98]\n", "adam_betas", "0.9,0.98"),
    ("inf-grad-norm-means-no-clipping", "max_grad_norm: .inf\n", "max_grad_norm", float("inf")),
]


def _rows(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model_dir):
    """Every hostile file of :data:`CORPUS`, built once: ``{name: path}``."""
    root = tmp_path_factory.mktemp("hostile")
    files = {
        "answer_400": _rows({"prompt": "1+1=", "answer": "9" * 400}),
        "answer_5000": '{"prompt": "1+1=", "answer": ' + "9" * 5000 + "}\n",
        "nan_row": '{"prompt": "1+1=", "answer": NaN}\n',
        "surrogate": '{"prompt": "1+1=\\ud800", "answer": "2"}\n',
        "surrogate_note": '{"prompt": "1+1=", "answer": "2", "note": "\\ud800"}\n',
        "deep_row": '{"prompt": "1+1=", "answer": "2", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
        "long_prompt": _rows({"prompt": "1+" * 20 + "1=", "answer": "21"}),
        "long_answer": _rows({"prompt": "1+1=", "answer": "2" * 20}),
        "cfg_batch_float.yaml": "batch_size: 4.5\n",
        "cfg_batch_bool.yaml": "batch_size: true\n",
        "cfg_model_int.yaml": f"model: 123\ndataset: {TOY}\n",
        "cfg_seed_str.yaml": "seed: abc\n",
        "cfg_list.yaml": "max_steps: [1, 2]\n",
        "cfg_map.yaml": "scorer: {name: arithmetic}\n",
        "cfg_lr_word.yaml": "learning_rate: fast\n",
        "cfg_lr_bool.yaml": "learning_rate: yes\n",
        "cfg_flag_str.yaml": "progress: maybe\n",
        "cfg_null.yaml": "batch_size:\n",
        "cfg_inf.yaml": "learning_rate: .inf\n",
        "cfg_laughs.yaml": LAUGHS,
        "cfg_deep.yaml": "seed: " + "[" * 50_000 + "]" * 50_000 + "\n",
        "cfg_huge_int.yaml": "seed: " + "9" * 5000 + "\n",
        "cfg_big.yaml": "# padding\n" * 110_000,
        "cfg_top_list.yaml": "- 1\n- 2\n",
        "cfg_syntax.yaml": "seed: 1\nmax_steps: a: b\n",
        "cfg_sigma_word.yaml": "sigma: big\n",
        "mixer_no_axis.yaml": "weights: {helpfulness: 1.0}\n",
    }
    paths = {}
    for name, text in files.items():
        path = root / (name if name.endswith(".yaml") else f"{name}.jsonl")
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        paths[name.removesuffix(".yaml")] = path
    paths["cfg_binary"] = root / "binary.yaml"
    paths["cfg_binary"].write_bytes(b"\xff\xfe\x00seed: 1\n")

    base = tiny_model_dir("qwen2")
    for name, damage in (("evil_model", "bin"), ("corrupt_model", "safetensors"), ("bad_config_model", "config")):
        paths[name] = root / name
        shutil.copytree(base, paths[name])
    (paths["evil_model"] / "model.safetensors").unlink()
    marker = root / "PICKLE_RAN"
    (paths["evil_model"] / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(str(marker))))
    (paths["corrupt_model"] / "model.safetensors").write_bytes(b"\x00garbage" * 8)
    (paths["bad_config_model"] / "config.json").write_text("{nope")
    paths["gpt2_16"] = root / "gpt2_16"
    init_model(paths["gpt2_16"], TinyModelSpec(arch="gpt2", layers=1, hidden=16, heads=2, max_positions=16, seed=1))
    from tests.test_eggroll_run import _write_rl_log

    paths["rl_runs"] = root / "rl_runs"
    _write_rl_log(paths["rl_runs"] / "rl" / "train.jsonl")
    paths["model"], paths["marker"] = base, marker
    return paths


@pytest.mark.parametrize("case, item, argv, message", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_input_gets_one_line_and_writes_nothing(hostile, tmp_path, case, item, argv, message):
    out = tmp_path / "out"
    args = [a.format(out=out, **hostile) for a in argv]
    message = message.format(**hostile)
    assert_one_line_error(invoke(cli, *args), message)
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.rglob("*"))
    assert not hostile["marker"].exists()  # no pickle ever ran


@pytest.mark.parametrize("case, text, name, value", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_config_values_are_read_by_their_field_type(tmp_path, case, text, name, value):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    config = TrainConfig.from_file(str(path), model="m", dataset="d")
    assert getattr(config, name) == value and type(getattr(config, name)) is type(value)


def test_corpus_covers_every_item():
    assert {item for _, item, _, _ in CORPUS} == {1, 2, 3, 4, 5, 7}  # 6 (Ctrl-C) has its own tests below


def test_data_without_count_still_writes_the_default(tmp_path):
    result = invoke(cli, "data", "parity", "--out", tmp_path / "p", "--n", "12")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p" / "dataset.json").read_text())["params"]["count"] == 1000


# 6. Ctrl-C: a run that stops before its last step exits 130, its log ending in status interrupted.

@pytest.fixture
def ctrl_c_at_start(monkeypatch):
    """As if Ctrl-C came during the first step: the loop finishes it and stops."""
    from rg_tracer.runtime.run import StopSignal

    def enter(self):
        self.requested = True
        return self

    monkeypatch.setattr(StopSignal, "__enter__", enter)


@pytest.mark.parametrize("argv, steps", [(TRAIN, "--max-steps"), (ES, "--generations")], ids=["train", "eggroll"])
def test_interrupted_run_exits_130(tiny_model_dir, tmp_path, ctrl_c_at_start, argv, steps):
    out = tmp_path / "run"
    args = [a.format(model=tiny_model_dir("qwen2"), out=out) for a in argv] + [steps, "3"]
    result = invoke(cli, *args)
    assert result.exit_code == 130, result.output
    end = read_log(out / "train.jsonl")[-1]
    assert end["kind"] == "end" and end["status"] == "interrupted" and end["step"] == 1


def test_second_ctrl_c_exits_130(monkeypatch, tiny_model_dir, tmp_path):
    from rg_tracer.dapo import trainer

    def abort(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", abort)
    result = invoke(cli, *[a.format(model=tiny_model_dir("qwen2"), out=tmp_path / "run") for a in TRAIN])
    assert result.exit_code == 130 and "aborted by Ctrl-C" in result.output and "Traceback" not in result.output


def test_sigint_to_an_eggroll_process_exits_130(tiny_model_dir, tmp_path):
    out = tmp_path / "es"
    args = [a.format(model=tiny_model_dir("qwen2"), out=out) for a in ES] + ["--generations", "500"]
    proc = subprocess.Popen([sys.executable, "-m", "rg_tracer.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while not (out / "train.jsonl").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert read_log(out / "train.jsonl")[-1]["status"] == "interrupted"


def test_run_help_states_the_exit_statuses():
    for command in ("train", "eggroll"):
        assert "130 stopped by Ctrl-C" in invoke(cli, command, "--help").output
