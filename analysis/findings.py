"""What happened in a run, in plain words: the findings that survive their tests, in step order.

The run page and ``summary.json`` lead with this list. Only what the
analysis could tell from noise is listed:

* jumps and phases of every axis (``analysis.transitions``: significant at
  family-wise 5% per axis, at least half a noise SD), with their size in
  noise SDs and the 95% interval of where they happened;
* leads, lags and same-step couplings between an RL metric and a reward axis
  (``analysis.correlations``: BH-adjusted p < 0.05 over the run's pairs);
* memorisation and generalisation (``analysis.grokking``: calls that account
  for the eval size).

Each finding is a dict with ``kind`` (``jump``, ``phase``, ``lead``, ``lag``,
``same_step``, ``memorised``, ``generalised``), ``step`` (for ordering;
``None`` for couplings, which hold over the run and come last), ``text`` and
the numbers behind the text.
"""

from __future__ import annotations

import math

import polars as pl

__all__ = ["run_findings", "axis_key", "SIGNIFICANT"]

SIGNIFICANT = 0.05


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "?"
    return f"{x:.3g}"


def axis_key(kind: str, axis: str) -> str:
    """How an axis is named in the report and ``summary.json``: rewards bare, others ``kind/axis``."""
    return axis if kind == "reward" else f"{kind}/{axis}"


def _change(t: dict) -> dict:
    name = axis_key(t["kind"], t["axis"])
    direction = "rose" if t["delta"] > 0 else "fell"
    size = f"{abs(t['size']):.1f} noise SD" if t.get("size") is not None and math.isfinite(t["size"]) else ""
    interval = f" (95% interval {t['onset_lo']}–{t['end_hi']})" if t.get("onset_lo") is not None else ""
    if t.get("shape") == "phase":
        text = (f"{name} {direction} gradually from {_fmt(t['before'])} to {_fmt(t['after'])} "
                f"over steps {t['onset_step']}–{t['end_step']}{interval}; {size}")
    else:
        text = (f"{name} jumped from {_fmt(t['before'])} to {_fmt(t['after'])} at step "
                f"{t['onset_step']}{interval}; {size}")
    return {"kind": t.get("shape") or "jump", "step": t["onset_step"], "axis": name, "text": text,
            "onset_step": t["onset_step"], "end_step": t["end_step"], "before": t["before"], "after": t["after"],
            "size": t.get("size"), "p_value": t.get("p_value"), "interval": [t.get("onset_lo"), t.get("end_hi")]}


def _coupling(link: dict) -> dict | None:
    relation = link.get("relation")
    p = link.get("p_adj")
    if relation not in ("lead", "lag", "same_step") or p is None or p >= SIGNIFICANT:
        return None
    lag, r = link["best_lag"], link.get("corr")
    ci = link.get("lag_ci")
    ci_text = f", 95% interval {ci[0]}–{ci[1]} steps" if ci and None not in ci else ""
    aliases = link.get("aliases") or []
    alias_text = f" (same series as {', '.join(aliases)})" if aliases else ""
    if relation == "same_step":
        text = (f"{link['metric']}{alias_text} and {link['axis']} move together in the same step "
                f"(r = {_fmt(r)}, p_adj = {_fmt(p)}); neither leads")
    elif relation == "lead":
        text = (f"{link['metric']}{alias_text} moves {abs(lag)} step(s) before {link['axis']} "
                f"(r = {_fmt(r)}{ci_text}, p_adj = {_fmt(p)})")
    else:
        text = (f"{link['axis']} moves {abs(lag)} step(s) before {link['metric']}{alias_text} "
                f"(r = {_fmt(r)}{ci_text}, p_adj = {_fmt(p)})")
    return {"kind": relation, "step": None, "metric": link["metric"], "axis": link["axis"], "text": text,
            "lag": lag, "corr": r, "p_adj": p, "lag_ci": ci}


def _grokking(g: dict) -> list[dict]:
    out = []
    for key, kind, split in (("memorisation_step", "memorised", "train"),
                             ("generalisation_step", "generalised", "held-out")):
        step = g.get(key)
        if step is None:
            continue
        ci = g.get(key.replace("_step", "_ci"))
        ci_text = f" (between steps {ci[0]} and {ci[1]})" if ci and None not in ci else ""
        out.append({"kind": kind, "step": step, "axis": g.get("axis"), "text":
                    f"{g.get('axis')} on the {split} split reached {g.get('threshold')} at step {step}{ci_text}",
                    "interval": ci})
    return out


def run_findings(transitions: pl.DataFrame, lead_lag: list[dict], grokking: dict) -> list[dict]:
    """The findings of one run (frames already filtered to it), changes and calls in step order, then couplings."""
    dated = [_change(t) for t in transitions.iter_rows(named=True)] + _grokking(grokking)
    dated.sort(key=lambda f: (f["step"], f["kind"]))
    couplings = [c for c in map(_coupling, lead_lag) if c is not None]
    couplings.sort(key=lambda c: (c["p_adj"], -abs(c["corr"] or 0)))
    return dated + couplings
