"""TRL's ``completions/completions_<step>.parquet`` files as rg-tracer samples.

Out of ``trl.py`` (:mod:`analysis.db.formats.trl`) so that the reader stays under ~300 lines:
reading the completions files of a run, one step at a time, into ``gepa`` and ``generation``
lists, with token counts from the run's ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from analysis.db.formats import note
from analysis.db.formats.trl_metrics import _number, _steps

TOKENIZER = "tokenizer.json"
_COMPLETIONS = re.compile(r"completions_(\d+)\.parquet")


def _completion_files(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / "completions"
    try:
        names = list(folder.iterdir())
    except OSError:
        return []
    found = [(int(m.group(1)), p) for p in names if (m := _COMPLETIONS.fullmatch(p.name))]
    return sorted(found)


def _text(value: object) -> str:
    """A prompt or completion: a string, or a conversation (a list of messages) as its contents."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for message in value:
            content = message.get("content") if isinstance(message, dict) else message
            if isinstance(content, list):  # multimodal parts: keep the text ones
                content = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            parts.append("" if content is None else str(content))
        return "\n".join(parts)
    return "" if value is None else str(value)


def _prompt_id(prompt: object) -> str:
    key = json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
    return "p" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


class _Samples:
    """The completions files of a run, one step at a time."""

    def __init__(self, run_dir: Path, reward_names: list[str], evals: dict[int, dict], tokenizer, args: dict,
                 train: dict[int, dict]) -> None:
        self.run_dir, self.reward_names, self.tokenizer, self.args, self.train = (
            run_dir, reward_names, tokenizer, args, train)
        self.files = dict(_completion_files(run_dir))
        overwritten = sorted(s for s in self.files if s in evals)
        for s in overwritten:
            del self.files[s]
        if overwritten:
            note(f"{run_dir / 'completions'}: the completions of step(s) {_steps(overwritten)} were overwritten by "
                 "TRL's evaluation at the same step (it logs both to completions_<step>.parquet): those steps "
                 "have metrics only")
        self.order: list[str] | None = None  # reward columns in the trainer's order (parquet column order)
        self._previous: list | None = None
        self.repeated: list[int] = []
        self.guessed = False
        self.no_tokens = False
        self.unknown_truncation: list[int] = []
        self.approximate: list[int] = []

    def read(self, step: int) -> tuple[list[dict], list[dict]]:
        path = self.files.get(step)
        if path is None:
            return [], []
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        except Exception as exc:  # ArrowInvalid and friends: a corrupt or truncated file
            note(f"{path}: not a readable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                 f"the samples of step {step} are left out")
            return [], []
        columns = table.column_names
        missing = [c for c in ("prompt", "completion") if c not in columns]
        if missing:
            note(f"{path}: no {' or '.join(missing)} column; not TRL completions, left out")
            return [], []
        rows = table.to_pylist()
        key = [(r.get("prompt"), r.get("completion"), r.get("advantage")) for r in rows]
        if key == self._previous:  # TRL re-logs the last batch when no new one was generated
            self.repeated.append(step)
            return [], []
        self._previous = key
        rewards = self._reward_columns(table)
        if self.order is None:
            self.order = rewards
        extras = [c for c in columns if c not in ("step", "prompt", "completion", "advantage", *rewards)]
        return self._samples(step, rows, rewards, extras)

    def _reward_columns(self, table) -> list[str]:
        import pyarrow.types as pt

        if self.reward_names:
            return [c for c in table.column_names if c in self.reward_names]
        self.guessed = True  # no log_history: every float column but advantage is a reward function
        return [f.name for f in table.schema if pt.is_floating(f.type) and f.name not in ("advantage", "step")]

    def _samples(self, step: int, rows: list[dict], rewards: list[str], extras: list[str]):
        prompts = [_text(r.get("prompt")) for r in rows]
        completions = [_text(r.get("completion")) for r in rows]
        if self.tokenizer is not None:
            p_tokens = [len(e.ids) for e in self.tokenizer.encode_batch(prompts, add_special_tokens=False)]
            c_tokens = [len(e.ids) for e in self.tokenizer.encode_batch(completions, add_special_tokens=False)]
        else:
            self.no_tokens = True
            p_tokens = c_tokens = [0] * len(rows)
        truncated = self._truncated(step, c_tokens)
        seen: dict[str, int] = {}
        gepa, generation = [], []
        for i, row in enumerate(rows):
            pid = _prompt_id(row.get("prompt"))
            k = seen[pid] = seen.get(pid, -1) + 1
            tags, meta = {}, {"prompt_id": pid}
            for c in extras:
                v = row.get(c)
                if _number(v) and math.isfinite(v):
                    tags[c] = float(v)
                elif v is not None and not _number(v):
                    meta[c] = v if isinstance(v, (str, bool)) else json.dumps(v, default=str, ensure_ascii=False)
            if _number(row.get("advantage")) and math.isfinite(row["advantage"]):
                meta["advantage"] = float(row["advantage"])
            gepa.append({"rewards": {c: float(row[c]) for c in rewards
                                     if _number(row.get(c)) and math.isfinite(row[c])},  # None/NaN: not applied
                         "tags": tags, "verifier": {}, "meta": meta, "abstained": False})
            generation.append({"prompt_id": pid, "completion_id": f"{pid}#{k}", "prompt_tokens": p_tokens[i],
                               "completion_tokens": c_tokens[i], "truncated": truncated[i],
                               "completion": completions[i]})
        return gepa, generation

    def _truncated(self, step: int, c_tokens: list[int]) -> list[bool]:
        """Exact from TRL's ``completions/clipped_ratio`` when it is 0 or 1; else a completion
        whose re-counted tokens reach ``max_completion_length``."""
        clipped = self.train.get(step, {}).get("completions/clipped_ratio")
        if clipped == 0 or clipped == 1:
            return [bool(clipped)] * len(c_tokens)
        limit = self.args.get("max_completion_length")
        if isinstance(limit, int) and self.tokenizer is not None:
            truncated = [n >= limit for n in c_tokens]
            if _number(clipped) and abs(sum(truncated) - clipped * len(c_tokens)) > 0.5:
                self.approximate.append(step)
            return truncated
        self.unknown_truncation.append(step)
        return [False] * len(c_tokens)

    def finish(self) -> None:
        run_dir = self.run_dir
        if self.repeated:
            note(f"{run_dir / 'completions'}: step(s) {_steps(self.repeated)} repeat the previous step's completions "
                 "(TRL logs its last generation batch again when none was generated in between: "
                 "num_iterations or steps_per_generation > 1); kept once, at the first step")
        if self.guessed and self.order:
            note(f"{run_dir}: no log_history to name the reward functions; the completions' number columns "
                 f"{', '.join(self.order)} were taken for them")
        if self.no_tokens:
            note(f"{run_dir}: no {TOKENIZER} in the run directory or its checkpoints; the samples' prompt and "
                 "completion token counts are written as 0 (unknown)")
        if self.approximate:
            note(f"{run_dir}: at step(s) {_steps(self.approximate)} the completions' re-counted tokens disagree with "
                 "TRL's completions/clipped_ratio (decoding drops special tokens the model generated), so which "
                 "samples hit max_completion_length is approximate there; the metric truncated_frac is TRL's own")
        if self.unknown_truncation:
            note(f"{run_dir}: which completions hit the length limit is unknown at step(s) "
                 f"{_steps(self.unknown_truncation)} (no max_completion_length or tokenizer); marked not truncated")
