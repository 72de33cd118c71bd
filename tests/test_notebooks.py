"""The notebooks are the tutorial: each must run top to bottom on a fresh kernel.

Every notebook trains its own tiny run (its first cells), so executing it here is a real
end-to-end test of the training and analysis APIs it uses. A second test points the
notebooks at an existing runs directory through ``RG_TRACER_RUNS``, the other way they are
used, with a run too short for most of the things the notebooks look for.

The kernel is started from a kernelspec written here that names this interpreter, so the
notebooks run in the project's environment whatever kernels the machine has installed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_explore_gepa_vectors.ipynb", "02_grokking_and_lead_lag.ipynb", "03_fitness_for_eggroll.ipynb"}
TIMEOUT = 600  # per cell; a notebook takes well under two minutes


def _kernel_manager(tmp_path: Path) -> KernelManager:
    """A kernel manager whose ``python3`` kernel runs this interpreter (``sys.executable``)."""
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "rg-tracer tests", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _execute(path: Path, tmp_path: Path) -> nbformat.NotebookNode:
    """Run every cell as Jupyter would (working directory: the notebook's folder); raise on an error."""
    nb = nbformat.read(path, as_version=4)
    probe = nbformat.v4.new_code_cell("import sys; print(sys.executable)")
    nb.cells.append(probe)
    client = NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=TIMEOUT,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # CellExecutionError (with the cell and traceback) if any cell fails
    printed = "".join(o.get("text", "") for o in probe.outputs).strip()
    assert os.path.realpath(printed) == os.path.realpath(sys.executable), printed
    return nb


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """The kernel inherits this environment: scratch files under tmp_path, no runs given."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' tempfile.mkdtemp lands here
    monkeypatch.delenv("RG_TRACER_RUNS", raising=False)
    monkeypatch.delenv("RG_TRACER_RUN", raising=False)
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return tmp_path


def test_all_notebooks_present():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    """Valid nbformat, no outputs, no execution counts: commit notebooks stripped."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs; clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel_env):
    """Fresh kernel, no RG_TRACER_RUNS: the notebook trains its own run and every cell succeeds."""
    nb = _execute(path, kernel_env)
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 3, f"{path.name} rendered {len(figures)} figures inline"
    assert not list(NOTEBOOK_DIR.glob("*.duckdb")) and not (NOTEBOOK_DIR / "runs").exists()


@pytest.fixture
def existing_runs(tmp_path):
    """A runs directory as a user would have one: short runs of DAPO (``demo``), EGGROLL (``es``)
    and supervised-only training (``sft``, as ``make grokking`` writes: eval curves, no samples)."""
    from rg_tracer.demo_run import demo_run, train_demo
    from rg_tracer.eggroll.config import EggrollConfig
    from rg_tracer.eggroll.search import search

    runs = tmp_path / "runs"  # the demo model goes to tmp_path / "model"; every run starts from it
    shared = dict(dataset=str(REPO / "datasets/toy_math/addition_tiny.jsonl"),
                  reward_mixer=str(REPO / "configs/demo/reward_mixer.yaml"), progress=False)
    demo_run(tmp_path, output_dir=str(runs / "demo"), max_steps=120, eval_every=40, save_every=0, **shared)
    search(EggrollConfig.from_file(str(REPO / "configs/eggroll/demo.yaml"), output_dir=str(runs / "es"),
                                   model=str(tmp_path / "model"), generations=30, eval_every=10, **shared))
    train_demo(tmp_path, output_dir=str(runs / "sft"), sft_steps=60, max_steps=60, eval_every=20, diag_every=5,
               save_every=0, **shared)
    return runs


def test_notebooks_read_RG_TRACER_RUNS(existing_runs, kernel_env, monkeypatch):
    """With RG_TRACER_RUNS set, the notebooks train nothing and read the runs given. As the docs
    write it: a path relative to the repository root, while the kernel runs elsewhere."""
    monkeypatch.setenv("RG_TRACER_RUNS", os.path.relpath(existing_runs, REPO))
    before = sorted(p.relative_to(existing_runs) for p in existing_runs.rglob("*.jsonl"))
    for path in NOTEBOOKS:
        _execute(path, kernel_env / path.stem)
    monkeypatch.setenv("RG_TRACER_RUN", "sft")  # notebook 02 on a run with eval curves but no samples
    _execute(NOTEBOOK_DIR / "02_grokking_and_lead_lag.ipynb", kernel_env / "02-sft")
    assert sorted(p.relative_to(existing_runs) for p in existing_runs.rglob("*.jsonl")) == before
    assert not list(kernel_env.glob("rg-tracer-notebook-*/runs"))  # nothing was trained
