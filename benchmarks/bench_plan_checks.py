"""How fast a recipe mistake is refused: plan-time checks, before anything is exported.

``python benchmarks/bench_plan_checks.py [--runs 7]``. Each mistake is made on the bundled
digits_torch recipe through the CLI, as a subprocess from the repository root; the command
must exit 2 or 3 with its one-paragraph error. The same wrong model input name is also refused
in-process by ``pipeline.plan.build`` (the stage kinds imported once beforehand, as the CLI
does), which is the part edgekiln itself adds to Python's and Hydra's start-up. Issue 7 asks
for "under a second"; this used to be a timed unit test, which failed on a loaded CI machine
for reasons that had nothing to do with the code. Prints min/median/max and writes
``benchmarks/plan_checks_results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "plan_checks_results.json"
AIM = 1.0  # seconds, issue 7: refused at plan time in under a second
MISTAKES = {
    "unknown kind": "stages.quantize.kind=quantise",
    "cycle": "stages.quantize.inputs.model=validate",
    "shared stage reading a per-target one": "stages.optimize.inputs.model=quantize",
    "input slot the kind lacks": "+stages.export.inputs.foo=optimize",
    "params typo": "quantize.calibration.sampels=64",
    "count below its minimum": "quantize.calibration.samples=0",
}


def refused_by_cli(override: str, artifacts: Path) -> float:
    """Wall seconds until the CLI refuses ``override``; fails loudly if it does not."""
    command = [sys.executable, "-m", "pipeline", "recipe=digits_torch", override,
               f"run.artifacts_dir={artifacts}", "run.progress=false"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode not in (2, 3):
        raise SystemExit(f"{override}: expected exit 2 or 3, got {proc.returncode}:\n"
                         + proc.stderr[-2000:])
    return seconds


def refused_in_process(runs: int, scratch: Path) -> list[float]:
    """Seconds ``plan.build`` takes to refuse a model input the data does not have."""
    from pipeline import plan
    from pipeline.errors import InputError
    from tests.fixtures.recipes import compose_recipe

    np.savez(scratch / "d.npz", pixels=np.zeros((40, 1, 8, 8), np.float32))
    data = ("dataset.kind=npz", f"dataset.path={scratch / 'd.npz'}")
    plan.build(compose_recipe("digits_torch", *data))  # kinds imported once, as in the CLI
    wrong = compose_recipe("digits_torch", *data, "model.inputs.0.name=pixels_")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        try:
            plan.build(wrong)
        except InputError:
            times.append(time.perf_counter() - start)
        else:
            raise SystemExit("plan.build accepted a model input the data does not have")
    return times


def _figures(times: list[float]) -> dict:
    return {"min": min(times), "median": statistics.median(times), "max": max(times),
            "runs": times, "under_aim": statistics.median(times) < AIM}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="edgekiln-bench-plan-"))
    results = {"plan.build, wrong model input name": _figures(refused_in_process(args.runs,
                                                                                  scratch))}
    for name, override in MISTAKES.items():
        results[f"CLI, {name}"] = _figures(
            [refused_by_cli(override, scratch / "artifacts") for _ in range(args.runs)])
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for name, row in results.items():
        print(f"{name:45s} min {row['min']:.3f} s  median {row['median']:.3f} s  "
              f"max {row['max']:.3f} s  (aim < {AIM:g} s: {'yes' if row['under_aim'] else 'NO'})")


if __name__ == "__main__":
    main()
