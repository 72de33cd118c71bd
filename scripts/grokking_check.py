"""Say plainly whether a grokking run met the preset's success criterion (`make grokking`).

    python scripts/grokking_check.py RUN_DIR REPORT_RUN_DIR

RUN_DIR holds the run's train.jsonl; REPORT_RUN_DIR the run's page from `rg-tracer analyze`
(its summary.json). The criterion (docs/grokking.md): `rg-tracer analyze` classifies the run
`generalised`; train >= 0.9 at the memorisation step M; every held-out eval up to step 3M at
or below 0.3; held-out >= 0.9 at the generalisation step G with G >= 5M. Prints one line, with
"did NOT" when any part fails; exits 0 either way (a run that did not grok is a result, not an
error), 1 only when the log or the summary is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def verdict(log_path: Path, summary_path: Path) -> tuple[bool, str]:
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    g = json.loads(summary_path.read_text(encoding="utf-8")).get("grokking") or {}
    axis = g.get("axis", "correctness")
    test = sorted((r["step"], r["metrics"][axis]) for r in records
                  if r.get("kind") == "eval" and r.get("split") == "test" and axis in r.get("metrics", {}))
    times = [r["time"] for r in records if "time" in r]
    wall = f"{(times[-1] - times[0]) / 60:.1f} min of training" if len(times) > 1 else "training time unknown"
    m, gen, status = g.get("memorisation_step"), g.get("generalisation_step"), g.get("status")
    if m is None:
        return False, f"did NOT generalise: the train split never reached 0.9 (status {status}; {wall})"
    first_high = next((s for s, v in test if v > 0.3), None)
    low_until = max((s for s, _ in test if first_high is None or s < first_high), default=0)
    quiet = all(v <= 0.3 for s, v in test if s <= 3 * m)
    parts = [f"memorised at step {m} {g.get('memorisation_ci')}",
             (f"held-out <= 0.3 through step {low_until} "
              f"({'ok' if quiet else 'FAILS'}: needs >= 3M = {3 * m})")]
    if gen is None:
        parts.append(f"held-out never confidently >= 0.9 (final {g.get('final_test')})")
        return False, f"did NOT generalise (status {status}): " + "; ".join(parts) + f"; {wall}"
    late = gen >= 5 * m
    parts.append(f"generalised at step {gen} {g.get('generalisation_ci')} "
                 f"({'ok' if late else 'FAILS'}: needs >= 5M = {5 * m})")
    ok = status == "generalised" and quiet and late
    head = "grokked (criterion met)" if ok else f"did NOT grok as specified (status {status})"
    return ok, f"{head}: " + "; ".join(parts) + f"; {wall}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run_dir, report_dir = Path(argv[0]), Path(argv[1])
    log, summary = run_dir / "train.jsonl", report_dir / "summary.json"
    for path in (log, summary):
        if not path.is_file():
            print(f"did NOT generalise: {path} is missing (did training and `rg-tracer analyze` finish?)")
            return 1
    _, line = verdict(log, summary)
    print(f"{run_dir.name}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
