"""`make demo` says "learned" only when held-out correctness rose, whatever the training reward did."""

import importlib.util

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("demo_script", f"{REPO}/scripts/demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def _evals(test: list[float], train: list[float], steps=(0, 80, 1500)) -> list[dict]:
    return [{"kind": "eval", "step": s, "split": split, "n": n, "metrics": {"correctness": v}}
            for split, curve, n in (("test", test, 120), ("train", train, 375)) for s, v in zip(steps, curve)]


def test_learned_needs_held_out_gain(capsys):
    verdict = demo.report(_evals([0.0, 0.38, 0.89], [0.0, 0.57, 0.96]), sft_steps=80)
    assert verdict.startswith("learned: held-out correctness rose +0.89") and "+0.51 of it" in verdict
    table = capsys.readouterr().out
    assert "0.89 [0.82, 0.94]" in table and "training prompts (n = 375)" in table


def test_memorising_run_is_called_out():
    verdict = demo.report(_evals([0.18, 0.2, 0.18], [0.1, 0.6, 0.99]), sft_steps=80)
    assert verdict.startswith("did NOT generalise: held-out correctness moved +0.00")


def test_no_held_out_evals_is_no_claim():
    assert demo.report(_evals([], [0.1, 0.9]), sft_steps=0).startswith("did NOT show learning")
