"""``rg-tracer fitness export``: one scalar fitness per unit, with everything that made it.

ingest -> compute -> write:

* ingest: :func:`analysis.open_runs` (the DuckDB cache ``rg-tracer analyze`` uses) gives
  every logged sample, its reward axes, and each run's config and reward weights.
* compute (:func:`fitness_table`, pure): per sample, upstream's ``mix_reward_vectors``
  turns the reward vector into the scalar the trainer (and the EGGROLL search) trains
  on; normalisation, when the mixer asks for it, is over the samples of one step, as in
  training. Samples are then averaged per unit: ``(run_id, step, member)`` for
  ``--by step``, plus ``task_id`` for ``task``, plus ``prompt_id`` for ``prompt``;
  ``member`` is the ES population member (``null`` for RL runs). Finally the unit
  fitness is shaped within its ``shaping_scope``: the units of one step (``step``) or,
  for ``--by step`` on an RL run where a step is a single unit, the steps of the run
  (``run``).
* write: Parquet, or CSV when ``--out`` ends in ``.csv``; through a temporary file
  renamed into place, so a failed export leaves nothing behind.

Columns are documented in ``docs/eggroll.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl

from rg_tracer.eggroll.shaping import shape_fitness
from rg_tracer.errors import UserError

__all__ = ["BY", "load_runs", "fitness_table", "write_table", "export_fitness"]

BY = {"step": (), "task": ("task_id",), "prompt": ("task_id", "prompt_id")}

#: run_id -> ``{"es": bool, "antithetic": bool, "mixer": RewardMixerConfig, "source": str}``
RunInfo = dict


def _run_info(runs, mixer_path: str | None) -> RunInfo:
    from gepa_dapo_grn import RewardMixerConfig

    from rg_tracer.reward_mixer import load_reward_mixer

    fixed = load_reward_mixer(mixer_path) if mixer_path else None
    # runs without samples (datasets, supervised-only logs) have no fitness: skipped
    rows = runs.sampled_run_records().iter_rows(named=True)
    info: RunInfo = {}
    for row in rows:
        config = json.loads(row["config"] or "{}")
        weights = json.loads(row["reward_weights"] or "null")
        if fixed is None and not weights:
            raise UserError(f"run {row['run_id']!r} logged no reward_weights; pass --weights reward_mixer.yaml")
        mixer = fixed or RewardMixerConfig(weights={k: float(v) for k, v in weights.items()},
                                           normalize=False, default_weight=0.0)
        info[row["run_id"]] = {
            "es": config.get("method") == "eggroll",
            "antithetic": bool(config.get("antithetic", True)),
            "mixer": mixer,
            "source": mixer_path or "run log",
        }
    return info


def load_runs(runs_dir: str | Path, mixer_path: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame, RunInfo]:
    """``(samples, reward axes, run info)`` of every run under ``runs_dir``."""
    from analysis import IngestError, open_runs

    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a directory; pass the directory your runs write to")
    if next(runs_dir.rglob("*.jsonl"), None) is None:  # checked here so an empty dir gets no database file
        raise UserError(f"no run logs (*.jsonl) under {runs_dir}; point RUNS_DIR at the directory your runs "
                        "write to (each run writes <run_dir>/train.jsonl)")
    try:
        with open_runs(runs_dir) as runs:
            samples = runs.samples().select("run_id", "step", "sample_idx", "task_id", "prompt_id", "completion_id")
            axes = runs.axes(kind="reward").select("run_id", "step", "sample_idx", "axis", "value")
            info = _run_info(runs, mixer_path)
    except IngestError as exc:
        raise UserError(str(exc)) from None
    if samples.is_empty():
        raise UserError(f"the runs under {runs_dir} logged no samples yet; export after at least one step")
    return samples, axes, info


def _mixed(frame: pl.DataFrame, axis_names: list[str], info: RunInfo) -> np.ndarray:
    """Per-sample mixed scalar (rows of ``frame`` are samples), batch-normalised per step.

    Only a normalising mixer depends on the batch, so other runs are mixed in one call.
    """
    from gepa_dapo_grn.reward_mixers import mix_reward_vectors

    out = np.empty(frame.height)
    indexed = frame.with_row_index("_row")
    for (run_id,), run in indexed.group_by(["run_id"], maintain_order=True):
        mixer = info[run_id]["mixer"]
        for _, part in (run.group_by(["step"], maintain_order=True) if mixer.normalize else [(None, run)]):
            vectors = [{a: v for a, v in zip(axis_names, values) if v is not None}
                       for values in part.select(axis_names).iter_rows()]
            scalar, _ = mix_reward_vectors(vectors, mixer)
            out[part["_row"].to_numpy()] = scalar.double().numpy()
    return out


def fitness_table(samples: pl.DataFrame, axes: pl.DataFrame, info: RunInfo, *, by: str = "step",
                  shaping: str = "none") -> pl.DataFrame:
    """Per-unit raw axes, mixed fitness and shaped fitness (see module docstring)."""
    if by not in BY:
        raise UserError(f"--by {by!r} is not one of {', '.join(BY)}")
    names = sorted(axes["axis"].unique().to_list())
    wide = axes.pivot(on="axis", index=["run_id", "step", "sample_idx"], values="value").select(
        "run_id", "step", "sample_idx", *names)
    frame = samples.join(wide, on=["run_id", "step", "sample_idx"], how="left").sort("run_id", "step", "sample_idx")
    es_runs = [r for r, i in info.items() if i["es"]]
    member = pl.col("completion_id").str.extract(r"#(\d+)$").cast(pl.Int64)
    frame = frame.with_columns(
        pl.when(pl.col("run_id").is_in(es_runs)).then(member).otherwise(None).alias("member"),
        pl.Series("fitness_raw", _mixed(frame, names, info)),
    )
    keys = ["run_id", "step", "member", *BY[by]]
    units = (
        frame.group_by(keys, maintain_order=True)
        .agg(pl.len().alias("n_samples"), *[pl.col(a).mean().alias(f"reward_{a}") for a in names],
             pl.col("fitness_raw").mean())
        .sort(keys, nulls_last=True)
    )
    units = units.with_columns(
        pl.when(pl.col("run_id").is_in(es_runs) | pl.lit(by != "step")).then(pl.lit("step"))
        .otherwise(pl.lit("run")).alias("shaping_scope"))
    shaped = np.empty(units.height)
    indexed = units.with_row_index("_row")
    for _, part in indexed.group_by(["run_id", "shaping_scope"]):
        groups = part.group_by("step") if part["shaping_scope"][0] == "step" else [(None, part)]
        for _, group in groups:
            # Shape in float32, as the search did, so ties it saw stay ties here.
            raw = group["fitness_raw"].to_numpy().astype(np.float32)
            shaped[group["_row"].to_numpy()] = shape_fitness(raw, shaping)
    antithetic = [r for r in es_runs if info[r]["antithetic"]]
    weights = _weight_columns(units["run_id"], names, info)
    weight_columns = [w.name for w in weights]
    return units.with_columns(
        pl.Series("fitness", shaped),
        pl.lit(shaping).alias("shaping"),
        pl.when(pl.col("run_id").is_in(antithetic)).then(1 - 2 * (pl.col("member") % 2))
        .when(pl.col("member").is_not_null()).then(1).otherwise(None).cast(pl.Int8).alias("sign"),
        *weights,
    ).select("run_id", "step", "member", "sign", *BY[by], "n_samples", *[f"reward_{a}" for a in names],
             "fitness_raw", "fitness", "shaping", "shaping_scope", *weight_columns)


def _weight_columns(run_ids: pl.Series, names: list[str], info: RunInfo) -> list[pl.Series]:
    mixers = [info[r]["mixer"] for r in run_ids]
    all_axes = sorted(set(names).union(*(m.weights for m in mixers)))
    return [
        pl.Series("weights", [json.dumps(dict(sorted(m.weights.items()))) for m in mixers]),
        *[pl.Series(f"weight_{a}", [float(m.weights.get(a, m.default_weight)) for m in mixers]) for a in all_axes],
        pl.Series("mixer_normalize", [bool(m.normalize) for m in mixers]),
        pl.Series("mixer_clip_min", [m.clip_min for m in mixers], dtype=pl.Float64),
        pl.Series("mixer_clip_max", [m.clip_max for m in mixers], dtype=pl.Float64),
        pl.Series("weights_source", [info[r]["source"] for r in run_ids]),
    ]


def write_table(frame: pl.DataFrame, out: str | Path) -> Path:
    """Write ``.parquet`` or ``.csv`` atomically (temporary file, then rename)."""
    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise UserError(f"--out {out}: name the file .parquet (or .csv for CSV)")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; pass a file path such as {out}/fitness.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        frame.write_csv(tmp) if out.suffix == ".csv" else frame.write_parquet(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _check_weights_name_axes(axes: pl.DataFrame, info: RunInfo, weights: str) -> None:
    """``--weights`` that name none of a run's reward axes would give it fitness 0 everywhere:
    refused as ``train`` refuses such a mixer (:func:`rg_tracer.reward_mixer.check_overlap`)."""
    from rg_tracer.reward_mixer import check_overlap

    for (run_id,), run in axes.group_by(["run_id"], maintain_order=True):
        check_overlap(info[run_id]["mixer"], set(run["axis"].unique()), f"--weights {weights} (run {run_id!r})")


def export_fitness(runs_dir: str | Path, out: str | Path, *, weights: str | None = None,
                   shaping: str = "none", by: str = "step") -> pl.DataFrame:
    """Load, compute and write; return the table written."""
    if by not in BY:
        raise UserError(f"--by {by!r} is not one of {', '.join(BY)}")
    if Path(out).suffix not in (".parquet", ".csv"):
        raise UserError(f"--out {out}: name the file .parquet (or .csv for CSV)")
    if weights and not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file (see configs/reward_mixer.yaml for the format)")
    shape_fitness([], shaping)  # an unknown method fails before the runs are read
    samples, axes, info = load_runs(runs_dir, weights)
    if weights:
        _check_weights_name_axes(axes, info, weights)
    table = fitness_table(samples, axes, info, by=by, shaping=shaping)
    write_table(table, out)
    return table
