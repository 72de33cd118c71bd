"""Shared pieces of ``train_throughput.py`` and ``log_overhead.py``.

Settings, the locally built tiny models, per-phase timers, a counting wrapper around
``model.generate`` (used identically on both sides, so generated-token counts come from
the same place), memory readings and a description of the machine.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT / "datasets/toy_math/addition_small.jsonl"
MIXER = ROOT / "configs/reward_mixer.yaml"

# Same thread count everywhere, set before torch is imported by a worker.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class Setting:
    name: str
    layers: int
    hidden: int
    heads: int
    max_new_tokens: int
    prompts_per_step: int = 2  # x group_size = completions per optimizer step
    group_size: int = 8
    warmup: int = 3  # steps per run excluded from timing
    steps: int = 12  # timed steps per run

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    def spec(self):
        from rg_tracer.models import TinyModelSpec

        return TinyModelSpec(arch="qwen2", layers=self.layers, hidden=self.hidden, heads=self.heads)


SETTINGS = {
    # rg-tracer's default tiny model (~137k parameters), G=8, 16 completions/step, 32 new tokens.
    "small": Setting("small", layers=2, hidden=64, heads=4, max_new_tokens=32, warmup=3, steps=12),
    # ~4.2M parameters, 64 new tokens.
    "large": Setting("large", layers=4, hidden=256, heads=4, max_new_tokens=64, warmup=2, steps=6),
}


def build_model(out_dir: Path, setting: Setting) -> int:
    """Random-init Qwen2 + char tokenizer saved to ``out_dir`` (both sides load this copy)."""
    from rg_tracer.models import init_model, quiet_transformers

    quiet_transformers()
    return init_model(out_dir, setting.spec())


def set_threads() -> None:
    import torch

    torch.set_num_threads(1)


# -- timing -----------------------------------------------------------------------
class Phases:
    """Accumulates seconds per phase name for the current step; ``close_step`` snapshots.

    Each phase is recorded twice: wall time (``name``) and this thread's CPU time
    (``cpu:name``). With one torch thread the CPU time is the work done, and it is far less
    disturbed than wall time when other processes compete for the two cores.
    """

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.steps: list[dict] = []

    def add(self, name: str, seconds: float, cpu: float | None = None) -> None:
        self.current[name] = self.current.get(name, 0.0) + seconds
        if cpu is not None:
            self.current["cpu:" + name] = self.current.get("cpu:" + name, 0.0) + cpu

    def count(self, name: str, n: float) -> None:
        self.counts[name] = self.counts.get(name, 0.0) + n

    def wrap(self, obj, attr: str, name: str | None = None) -> bool:
        """Time every call of ``obj.attr`` (instance-level override); False if it does not exist."""
        fn = getattr(obj, attr, None)
        if fn is None:
            return False
        name = name or attr

        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0, time.thread_time() - c0)

        setattr(obj, attr, timed)
        return True

    def close_step(self, total: float, cpu: float) -> dict:
        """``total``: wall seconds of the step; ``cpu``: process CPU seconds of the step."""
        record = {"total": total, "cpu:total": cpu, **self.current, **{f"n_{k}": v for k, v in self.counts.items()}}
        self.steps.append(record)
        self.current, self.counts = {}, {}
        return record


def wrap_generate(model, phases: Phases, eos_id: int, pad_id: int) -> None:
    """Time ``model.generate`` and count what it produced: sequences, new tokens, EOS, prompt width."""
    original = model.generate

    def generate(*args, **kwargs):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), time.thread_time()
        out = original(*args, **kwargs)
        phases.add("generate", time.perf_counter() - t0, time.thread_time() - c0)
        phases.count("gen_page_faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        inp = kwargs.get("input_ids", args[0] if args else None)
        width = inp.shape[1]
        new = out[:, width:]
        phases.count("gen_calls", 1)
        phases.count("sequences", out.shape[0])
        phases.count("new_tokens", new.numel())
        phases.count("eos_tokens", int((new == eos_id).sum()))
        phases.count("pad_tokens", int((new == pad_id).sum()) if pad_id != eos_id else 0)
        phases.count("prompt_width", width)
        return out

    model.generate = generate


def wrap_cached_decode(phases: Phases, eos_id: int, pad_id: int) -> None:
    """The same timing and counts for rg-tracer's own sampling loop (``rg_tracer.runtime.decode``)."""
    import rg_tracer.runtime.policy_adapter as adapter

    original = adapter.cached_decode

    def cached_decode(model, input_ids, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.thread_time()
        new = original(model, input_ids, *args, **kwargs)
        phases.add("generate", time.perf_counter() - t0, time.thread_time() - c0)
        phases.count("gen_calls", 1)
        phases.count("sequences", new.shape[0])
        phases.count("new_tokens", new.numel())
        phases.count("eos_tokens", int((new == eos_id).sum()))
        phases.count("pad_tokens", int((new == pad_id).sum()) if pad_id != eos_id else 0)
        phases.count("prompt_width", input_ids.shape[1])
        return new

    adapter.cached_decode = cached_decode


# -- memory -----------------------------------------------------------------------
class NullLogger:
    """Builds each record as the trainer's logger does and writes nothing: the log's cost by difference."""

    path = None

    def stage(self, kind: str, **fields) -> dict:
        return self.write(kind, **fields)

    def write(self, kind: str, **fields) -> dict:
        from rg_tracer.schema import SCHEMA

        return {"schema": SCHEMA, "kind": kind, **fields}

    def close(self) -> None:
        pass


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- statistics -------------------------------------------------------------------
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def quantile(values, q: float):
    values = sorted(v for v in values if v is not None)
    return values[round(q * (len(values) - 1))] if values else None


def spread(values):
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (None, None)


# -- subprocess workers -----------------------------------------------------------
def run_worker(script: Path, args: list[str], timeout: float = 900) -> dict:
    """Run ``script --worker ...`` in a fresh interpreter; it writes JSON to --out."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, **THREAD_ENV}
    cmd = [sys.executable, str(script), *args, "--out", out]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"worker failed ({proc.returncode}): {' '.join(cmd)}")
    with open(out) as f:
        result = json.load(f)
    os.unlink(out)
    return result


def write_json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f)


# -- environment ------------------------------------------------------------------
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - best effort
        return "?"


def environment() -> dict:
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "torch": version("torch"), "transformers": version("transformers"), "trl": version("trl"),
        "datasets": version("datasets"), "accelerate": version("accelerate"),
        "gepa-dapo-grn": version("gepa-dapo-grn"), "rg-tracer": version("rg-tracer"),
        "git": _git("rev-parse", "--short", "HEAD") + (" (dirty tree)" if _git("status", "--porcelain", "--untracked-files=no") else ""),
        "loadavg_start": os.getloadavg()[0],
    }
