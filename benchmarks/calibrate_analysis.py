#!/usr/bin/env python
"""Every calibration of the analysis in one run: how often its findings are wrong on known truth.

    .venv/bin/python benchmarks/calibrate_analysis.py [--seeds 50]

Runs, with the same seed count, the three calibrations whose tables are in
``docs/analysis.md`` and ``docs/grokking.md``:

* ``calibrate_transitions.py`` — false jumps/phases on null series (white
  noise, random walk, AR(1) 0.9, ramp, binomial decays), power and placement
  on planted jumps and a sigmoid;
* ``calibrate_leadlag.py`` — false lead/lag findings on independent series,
  planted leads of +3/-5/+20 steps, same-step couplings never called leads,
  the false-discovery proportion of a many-pair run;
* ``calibrate_grokking.py`` — generalisation calls on a plateau below the
  threshold and on a real crossing, at the eval sizes 64 and 11
  (``--seeds`` times 6, at least 300).

Each section prints its own table. Takes a few minutes at 50 seeds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50, help="seeds per family (>= 50 for the documented tables)")
    args = parser.parse_args()
    runs = [
        ("transitions", ["calibrate_transitions.py", "--seeds", str(args.seeds)]),
        ("lead/lag and correlations", ["calibrate_leadlag.py", "--seeds", str(args.seeds)]),
        ("grokking calls", ["calibrate_grokking.py", "--seeds", str(max(300, 6 * args.seeds))]),
    ]
    failed = 0
    for title, argv in runs:
        print(f"\n## {title}\n", flush=True)
        failed |= subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]]).returncode
    return failed


if __name__ == "__main__":
    sys.exit(main())
