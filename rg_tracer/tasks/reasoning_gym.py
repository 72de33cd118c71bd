"""reasoning-gym tasks as rg-tracer datasets, verified by each task's own ``score_answer``.

``rg-tracer data reasoning-gym --task NAME --out DIR`` draws items from
``reasoning_gym.create_dataset(NAME, size=, seed=, **config)`` and writes them in the
trainer's format: ``id``, ``task`` (NAME), ``prompt`` (the question), ``answer``, the item's
``metadata`` (what the task's verifier reads) and ``task_config`` (the config the item was
drawn with, so that the verifier is rebuilt as it was). Before writing, every row is scored
with the task's ``score_answer`` from its stored, JSON-decoded form and must get 1.0, and the
split is checked by :func:`rg_tracer.tasks.generators.check_disjoint` like the other tasks.

Difficulty splits: ``train_config`` and ``test_config`` are passed to ``create_dataset`` for
the two splits (e.g. ``{"min_digits": 1, "max_digits": 2}`` vs ``{"min_digits": 3,
"max_digits": 3}``); with one config both splits come from one stream of items. Items whose
prompt was already drawn are skipped; at most :data:`DRAWS_PER_ITEM` draws per item.

reasoning-gym is an optional dependency (``pip install 'rg-tracer[reasoning]'``), imported
only when a function here runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from importlib import metadata as _metadata
from typing import Any, Callable

from rg_tracer.errors import UserError
from rg_tracer.tasks.generators import Split, _digest, check_count, check_disjoint

__all__ = ["EXTRA", "DRAWS_PER_ITEM", "require_reasoning_gym", "check_task", "parse_config", "make_rg_split",
           "verifier", "entry_of"]

#: How to install the optional dependency, as printed in errors.
EXTRA = "pip install 'rg-tracer[reasoning]'"
#: Draws per requested item before a split is declared short of distinct prompts.
DRAWS_PER_ITEM = 4
#: Shown when a task name is unknown (those that exist in the installed version).
_EXAMPLES = ("basic_arithmetic", "chain_sum", "leg_counting", "gcd", "count_bits", "word_sorting")
_OURS = ("size", "seed")  # set by --size/--seed, not by a config


def require_reasoning_gym():
    """The ``reasoning_gym`` module, or one line saying how to install it."""
    try:
        import reasoning_gym
    except ImportError:
        raise UserError(f"reasoning-gym tasks need the reasoning-gym package: {EXTRA}") from None
    return reasoning_gym


def _registry() -> dict:
    require_reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return DATASETS


def check_task(name: str) -> None:
    """Refuse a task reasoning-gym does not have, naming a few it has."""
    tasks = _registry()
    if name in tasks:
        return
    close = difflib.get_close_matches(name, sorted(tasks), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    examples = [t for t in _EXAMPLES if t in tasks] or sorted(tasks)[:5]
    raise UserError(f"unknown reasoning-gym task {name!r}; {hint}it has {len(tasks)} tasks, e.g. "
                    f"{', '.join(examples)} (all: python -c \"from reasoning_gym.factory import DATASETS; "
                    "print(*sorted(DATASETS))\")")


def _options(task: str) -> list[str]:
    config_cls = _registry()[task][1]
    return [f.name for f in dataclasses.fields(config_cls) if f.name not in _OURS]


def parse_config(text: str | None, flag: str) -> dict:
    """A ``--train-config``/``--test-config`` JSON object (``{}`` when not given)."""
    if text is None:
        return {}
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{flag} {text!r} is not valid JSON ({exc}); e.g. '{{\"min_digits\": 1}}'") from None
    if not isinstance(config, dict):
        raise UserError(f"{flag} must be a JSON object of the task's options, e.g. '{{\"min_digits\": 1}}'")
    ours = [k for k in config if k in _OURS]
    if ours:
        raise UserError(f"{flag}: set {ours[0]!r} with --{ours[0]}, not in the config")
    return config


def _dataset(task: str, config: dict, seed: int, size: int, flag: str):
    rg = require_reasoning_gym()
    try:
        return rg.create_dataset(task, size=size, seed=seed, **config)
    except TypeError as exc:
        unknown = [k for k in config if k not in _options(task)]
        if unknown:
            raise UserError(f"{flag}: {task} has no option {unknown[0]!r}; its options: "
                            f"{', '.join(_options(task))}") from None
        raise UserError(f"{flag}: {task} refuses {json.dumps(config)} ({exc})") from None
    except (AssertionError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{flag}: {task} refuses {json.dumps(config)} ({reason})") from None


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


@functools.lru_cache(maxsize=64)
def _verifier(task: str, config_key: str) -> Callable[[str | None, dict], float]:
    return _dataset(task, json.loads(config_key), seed=0, size=1, flag="task_config").score_answer


def verifier(task: str, config: dict | None = None) -> Callable[[str | None, dict], float]:
    """``score_answer`` of ``task`` built with ``config`` (cached): ``(answer, entry) -> [0, 1]``."""
    check_task(task)
    return _verifier(task, _config_key(config or {}))


def entry_of(row: dict) -> dict:
    """The reasoning-gym entry a dataset row stores: question, answer, metadata."""
    return {"question": row["prompt"], "answer": row["answer"], "metadata": row.get("metadata") or {}}


def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(type(value).__name__)


def _row(task: str, config: dict, entry: dict, row_id: str) -> dict:
    answer, question = entry.get("answer"), entry.get("question")
    if answer is None:
        raise UserError(f"{task} gives no reference answer (it accepts many); rg-tracer data needs tasks with one, "
                        "e.g. basic_arithmetic or leg_counting")
    if not isinstance(question, str) or not question:
        raise UserError(f"{task} gave an empty or non-text question at {row_id}; it cannot be a prompt")
    try:
        meta = json.loads(json.dumps(entry.get("metadata") or {}, default=_plain))
    except TypeError as exc:
        raise UserError(f"{task}: its metadata holds a {exc} that JSON cannot store; its items cannot be "
                        "verified later") from None
    row = {"id": row_id, "task": task, "prompt": question, "answer": str(answer), "metadata": meta,
           "task_config": config}
    score = verifier(task, config)(row["answer"], entry_of(row))
    if score != 1.0:
        raise UserError(f"{task}: its own score_answer gives {score} to its reference answer once the item is "
                        "stored as JSON; its items cannot be verified from a dataset row")
    return row


def _draw(task: str, pool, config: dict, start: int, need: int, taken: set[str], split: str,
          flag: str) -> tuple[list[dict], int]:
    """``need`` rows of unseen prompts from ``pool`` from index ``start``; and the next index."""
    rows, i = [], start
    while len(rows) < need and i < len(pool):
        entry = pool[i]
        i += 1
        digest = _digest(str(entry.get("question")))
        if digest in taken:
            continue
        taken.add(digest)
        rows.append(_row(task, config, entry, f"{task}-{split}-{len(rows)}"))
    if len(rows) < need:
        shown = json.dumps(config) if config else "the default config"
        raise UserError(f"{task} gave {len(rows)} distinct {split} prompts of the {need} asked in {i - start} draws "
                        f"with {shown}; lower --size, or widen {flag} (e.g. more digits or terms)")
    return rows, i


def make_rg_split(task: str, *, size: int = 1000, seed: int = 0, test_frac: float = 0.2,
                  train_config: dict | None = None, test_config: dict | None = None) -> Split:
    """Draw ``size`` items of ``task``, ``round(size * test_frac)`` of them held out; verify; return the split.

    ``test_config`` defaults to ``train_config``; equal configs draw both splits from one stream
    (train first), different ones from one dataset each, with the same ``seed``.
    """
    check_task(task)
    check_count(size, "--size")
    if not 0 < test_frac < 1:
        raise UserError(f"--test-frac {test_frac} must be in (0, 1), e.g. 0.2")
    n_test = round(size * test_frac)
    if not 0 < n_test < size:
        raise UserError(f"--test-frac {test_frac} of --size {size} leaves an empty split; raise --size")
    train_config = dict(train_config or {})
    test_config = dict(train_config if test_config is None else test_config)
    same = _config_key(train_config) == _config_key(test_config)
    limit = DRAWS_PER_ITEM * size
    train_pool = _dataset(task, train_config, seed, limit, "--train-config")
    taken: set[str] = set()
    train, next_index = _draw(task, train_pool, train_config, 0, size - n_test, taken, "train", "--train-config")
    if same:
        test, _ = _draw(task, train_pool, train_config, next_index, n_test, taken, "test", "--train-config")
    else:
        test_pool = _dataset(task, test_config, seed, DRAWS_PER_ITEM * n_test, "--test-config")
        test, _ = _draw(task, test_pool, test_config, 0, n_test, taken, "test", "--test-config")
    params = {"source": "reasoning-gym", "reasoning_gym_version": _version(), "size": size, "seed": seed,
              "test_frac": test_frac, "train_config": train_config, "test_config": test_config}
    split = Split(task, params, train, test)
    check_disjoint(split)
    return split


def _version() -> str | None:
    try:
        return _metadata.version("reasoning-gym")
    except _metadata.PackageNotFoundError:
        return None
