"""The one definition of the rg-tracer JSONL log format (``rg-tracer/2``).

The trainer's writer and the analysis ingester both import this module, so the
format lives in exactly one place. It imports neither torch nor duckdb: the
analysis half must load without torch.

A log is one JSON object per line. Every record carries ``"schema"`` and
``"kind"``:

``run``   first line of every (re)started training segment: ``config``,
          ``versions``, ``model``, ``dataset``, ``seed``, ``resumed_from_step``.
``step``  one optimisation step: ``step``, ``phase`` (``rl``; ``sft`` for supervised
          warm-up steps, whose ``gepa``/``generation`` are empty and whose
          policy_loss/kl/clip_ratio are null; ``es`` for an EGGROLL generation),
          ``rl`` (:data:`RL_KEYS` for ``rl``/``sft`` steps; rg-tracer's own names, upstream's
          metrics under ``upstream/``, no number twice), ``es`` (``es`` steps only:
          :data:`ES_KEYS` and each member's fitness), ``gepa`` (per sample),
          ``generation`` (per sample, aligned with ``gepa``), ``curriculum``, ``safety``,
          ``timing``.
``eval``  held-out evaluation: ``step``, ``split``, ``n``, ``metrics``.
``end``   last line of a segment that finished or was interrupted cleanly.

:func:`upgrade` reads older logs: ``rg-tracer/1`` records (upstream's metrics mixed into
``rl`` under their own names, ES statistics as pseudo-RL metrics) and records written by
the upstream project (no ``schema``/``kind``). :func:`step_record` and friends build the
records every writer writes; :func:`supersede` is the one rule for resumed segments.
``docs/log_schema.md`` is the prose version.

Readers and writers check differently. ``validate(record)`` (the writers' tests) refuses a record
that lacks anything the format promises. ``validate(record, notes)`` (the ingester) protects the
analysis, not the writer: a missing or mistyped field the analysis can do without (``versions``,
``config``, ``seed``, an ``rl`` metric, a sample's ``tags``, an eval's ``n``, ...) is read with its
default and noted in ``notes`` as ``(field, message)``; only what the analysis cannot use is an
error. Integers are bounded: steps (and ``resumed_from_step``) by :data:`MAX_STEP`, counts by
:data:`MAX_COUNT`. Step records may carry step 0 (upstream counts from 0; rg-tracer writes from 1).
Those per-kind checks live in :mod:`rg_tracer.schema_validation`, which :func:`validate` calls.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LOG_NAME",
    "SCHEMA",
    "KINDS",
    "RL_KEYS",
    "SAMPLE_KEYS",
    "GENERATION_KEYS",
    "ES_KEYS",
    "UPSTREAM_PREFIX",
    "UPSTREAM_NAMES",
    "MAX_STEP",
    "MAX_COUNT",
    "SchemaError",
    "upgrade",
    "validate",
    "supersede",
    "resume_point",
    "run_record",
    "step_record",
    "eval_record",
    "end_record",
]

SCHEMA = "rg-tracer/2"
#: older versions :func:`upgrade` reads
OLDER = ("rg-tracer/1",)
#: the file name of a run's log inside its run directory
LOG_NAME = "train.jsonl"
KINDS = ("run", "step", "eval", "end")

#: Keys every ``step`` record's ``rl`` object carries (``None`` never; NaN is
#: written as ``null`` only when a metric could not be computed).
RL_KEYS = ("loss", "policy_loss", "kl", "clip_ratio", "lr", "grad_norm")
#: the namespace of upstream ``DAPOTrainer.train_step`` metrics inside ``rl``
UPSTREAM_PREFIX = "upstream/"
#: Keys every ``es`` step's ``es`` object carries (numbers), besides ``shaping`` and the
#: per-member lists ``member_fitness``/``member_shaped``.
ES_KEYS = ("fitness_mean", "fitness_std", "fitness_min", "fitness_max", "best_member", "update_norm",
           "sigma", "rank", "population")
PHASES = ("rl", "sft", "es")
#: The largest ``step`` (and ``resumed_from_step``) a record may carry: a larger one is a bad line.
#: Analysis costs grow with the number of logged steps, not with their values, but steps are
#: stored as 64-bit integers and shown in reports; 10^12 leaves room for any real run.
MAX_STEP = 10**12
#: The largest count (``n``, token counts): what a 64-bit integer column holds.
MAX_COUNT = 2**63 - 1
#: Upstream's names for quantities rg-tracer logs under its own name, read in upstream-shaped
#: records (no ``schema``/``kind``); a name already present in the record wins over a mapped one.
UPSTREAM_NAMES = {"loss/total": "loss", "loss/policy": "policy_loss", "kl/value": "kl", "learning_rate": "lr",
                  "reward/mean": "reward_mixed_mean", "reward/std": "reward_mixed_std"}

SAMPLE_KEYS = ("rewards", "tags", "verifier", "meta", "abstained")
GENERATION_KEYS = (
    "prompt_id",
    "completion_id",
    "prompt_tokens",
    "completion_tokens",
    "truncated",
    "completion",
)


class SchemaError(ValueError):
    """A record does not follow ``rg-tracer/2``; ``field`` names the offending path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def upgrade(record: Any) -> dict:
    """Return ``record`` as an ``rg-tracer/2`` record.

    ``rg-tracer/1`` records go through :func:`upgrade_v1`. Records without ``schema`` but
    shaped like the upstream project's step records become ``step`` records; per-sample
    ``verifier`` defaults to ``{}``. Raises :class:`SchemaError` for anything else.
    """
    if not isinstance(record, dict):
        raise SchemaError("<record>", f"expected a JSON object, got {type(record).__name__}")
    schema = record.get("schema")
    if schema == SCHEMA:
        return record
    if schema in OLDER:
        return upgrade_v1(record)
    if schema is not None:
        raise SchemaError("schema", f"unknown schema {schema!r}; this version reads {SCHEMA!r} and {', '.join(OLDER)}")
    if "step" in record and ("gepa" in record or "rl" in record):
        upgraded = dict(record)
        upgraded["schema"] = SCHEMA
        upgraded["kind"] = "step"
        upgraded.setdefault("rl", {})
        rl = upgraded["rl"]
        if isinstance(rl, dict) and any(key in UPSTREAM_NAMES for key in rl):
            upgraded["rl"] = _upstream_names(rl)
        upgraded["gepa"] = [
            {**{"verifier": {}, "tags": {}, "meta": {}, "abstained": False}, **s}
            if isinstance(s, dict)
            else s
            for s in record.get("gepa") or []
        ]
        upgraded.setdefault("generation", [])
        return upgraded
    raise SchemaError("schema", "missing; not an rg-tracer record nor an upstream step record")


def _upstream_names(rl: dict) -> dict:
    """``rl`` with upstream's names of rg-tracer's quantities mapped (:data:`UPSTREAM_NAMES`), order kept."""
    out = {}
    for key, value in rl.items():
        new = UPSTREAM_NAMES.get(key)
        if new is None or new in rl or new in out:
            out.setdefault(key, value)
        else:
            out[new] = value
    return out


# rg-tracer/1 wrote upstream's train_step metrics into ``rl`` under their own names: these
# prefixes are upstream's (the gepa-dapo-grn 0.4 metric names), and these names repeat
# rg-tracer's own numbers exactly (dropped).
_V1_UPSTREAM = ("loss/", "kl/", "reward/", "reward_scalar/", "reward_std/", "reward_weight/", "policy/",
                "safety_")
_V1_DUPLICATES = ("loss/total", "kl/value", "reward/mean", "reward/std", "reward_scalar/mean", "reward_scalar/std")
_V1_ES = {"fitness/mean": "fitness_mean", "fitness/std": "fitness_std", "fitness/min": "fitness_min",
          "fitness/max": "fitness_max", "fitness/best_member": "best_member", "es/update_norm": "update_norm",
          "es/sigma": "sigma", "es/rank": "rank", "es/population": "population"}


def upgrade_v1(record: dict) -> dict:
    """An ``rg-tracer/1`` record as ``rg-tracer/2``. Only ``step`` records change:

    * RL and SFT steps: upstream's metrics move under :data:`UPSTREAM_PREFIX`, less the
      exact duplicates of rg-tracer's (``loss/total`` = ``loss``, ``kl/value`` = ``kl``,
      ``reward/*`` and ``reward_scalar/*`` = ``reward_mixed_mean/std``); ``reward_mean/<axis>``
      was upstream's (written only with a normalising mixer) and moves too.
    * ES steps: ``fitness/*`` and ``es/*`` move into the ``es`` object (:data:`ES_KEYS`); the
      pseudo-RL values (``loss`` = ``policy_loss`` = -fitness, ``grad_norm`` = update norm / lr,
      ``kl`` and ``clip_ratio`` null) are dropped.
    """
    out = {**record, "schema": SCHEMA}
    rl = record.get("rl")
    if record.get("kind") != "step" or not isinstance(rl, dict):
        return out
    if record.get("phase") == "es":
        es = {**(record.get("es") or {})}
        es.update({new: rl[old] for old, new in _V1_ES.items() if old in rl})
        out["es"] = es
        out["rl"] = {k: v for k, v in rl.items()
                     if k not in _V1_ES and k not in ("loss", "policy_loss", "kl", "clip_ratio", "grad_norm")}
        return out
    moved = {}
    for key, value in rl.items():
        if key in _V1_DUPLICATES:
            continue
        upstream = key.startswith(_V1_UPSTREAM) or key.startswith("reward_mean/")
        moved[UPSTREAM_PREFIX + key if upstream else key] = value
    out["rl"] = moved
    return out


def validate(record: Any, notes: list | None = None) -> dict:
    """Upgrade and check one record; return it or raise :class:`SchemaError`.

    Without ``notes`` (a writer's check) every field the format promises must be there. With a
    list (a reader), a field the analysis can do without is read with its default when missing
    or mistyped, and ``(field, message)`` is appended to ``notes``; the record may then be a
    modified copy.
    """
    from rg_tracer.schema_validation import _VALIDATORS, _short  # it imports this module's names

    record = upgrade(record)
    kind = record.get("kind")
    if kind not in _VALIDATORS:
        raise SchemaError("kind", f"expected one of {', '.join(KINDS)}, got {_short(kind)}")
    if notes is not None:
        record = dict(record)
        if kind == "step" and isinstance(record.get("gepa"), list):
            record["gepa"] = list(record["gepa"])
    _VALIDATORS[kind](record, notes)
    return record


def resume_point(record: dict) -> int:
    """The step a ``run`` record restarts from: ``resumed_from_step``, with ``null`` (a fresh
    start) as 0. Records of earlier segments with a larger step are superseded."""
    return record.get("resumed_from_step") or 0


def supersede(records: list[dict]) -> list[dict]:
    """The records a reader keeps, in log order; the one rule, which the ingester implements
    vectorised (``analysis/db/_records.py``, tested against this function):

    * a ``run`` record drops ``step``/``eval``/``end`` records of earlier segments with
      ``step > resume_point(run)`` (``--resume`` from the checkpoint at that step; a fresh
      start, ``resumed_from_step: null``, drops them all);
    * of a ``step`` (or an ``eval`` of one split) logged twice, the later line wins.
    """
    kept: list[dict] = []
    for record in records:
        if record.get("kind") == "run":
            k = resume_point(record)
            kept = [r for r in kept if r.get("kind") not in ("step", "eval", "end") or r["step"] <= k]
        kept.append(record)
    last: dict[tuple, int] = {}
    for i, record in enumerate(kept):
        if record.get("kind") in ("step", "eval"):
            last[(record["kind"], record["step"], record.get("split"))] = i
    return [r for i, r in enumerate(kept)
            if r.get("kind") not in ("step", "eval") or last[(r["kind"], r["step"], r.get("split"))] == i]


# -- record builders: every writer builds its records here -------------------------------
def run_record(*, config: dict, versions: dict, model: dict, dataset: dict, reward_weights: dict,
               resumed_from_step: int | None, distributed: dict | None = None) -> dict:
    """The fields of a ``run`` record (the writer adds ``schema``, ``kind`` and ``time``);
    ``distributed`` (``{world_size, backend}``) only for a run of several processes."""
    fields = dict(config=config, versions=versions, model=model, dataset=dataset, seed=config.get("seed"),
                  reward_weights=reward_weights, resumed_from_step=resumed_from_step)
    if distributed:
        fields["distributed"] = distributed
    return fields


def step_record(*, step: int, phase: str, rl: dict, gepa: list | None = None, generation: list | None = None,
                timing: dict, curriculum: dict | None = None, safety: dict | None = None,
                es: dict | None = None) -> dict:
    """The fields of a ``step`` record. ``sft`` steps have no samples and null
    ``policy_loss``/``kl``/``clip_ratio``; ``es`` steps carry ``es`` and no pseudo-RL values."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {PHASES}")
    if phase == "sft":
        rl = {"policy_loss": None, "kl": None, "clip_ratio": None, **rl}
    fields = dict(step=step, phase=phase, rl=rl, gepa=gepa or [], generation=generation or [],
                  curriculum=curriculum or {}, safety=safety or {}, timing=timing)
    if phase == "es":
        fields["es"] = es
    return fields


def eval_record(*, step: int, split: str, n: int, metrics: dict, samples: list | None = None) -> dict:
    """The fields of an ``eval`` record; ``samples`` (optional): a few prompts with their greedy
    completion and scores, ``[{prompt_id, prompt, answer, completion, scores}]``."""
    fields = dict(step=step, split=split, n=n, metrics=metrics)
    if samples:
        fields["samples"] = samples
    return fields


def end_record(*, step: int, status: str) -> dict:
    """The fields of an ``end`` record: ``completed`` or ``interrupted``."""
    return dict(step=step, status=status)
