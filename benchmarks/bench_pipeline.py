"""edgekiln's overhead: its cold build and cached rebuild against benchmarks/handwritten.py.

``python benchmarks/bench_pipeline.py [--recipes digits_torch digits_keras resnet_jetson]
[--repeat 1]``. For each recipe and repeat it times, as subprocesses from the repository root
and each on a fresh temporary directory: the hand-written script, ``python -m pipeline`` cold,
and the same command again (cached). The order of the hand-written and edgekiln runs alternates
between repeats so that machine noise hits both; medians are reported. Prints a summary and a
per-stage table (edgekiln's run.json vs the script's own step timings) and writes
``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HANDWRITTEN = Path(__file__).resolve().parent / "handwritten.py"
RESULTS = Path(__file__).resolve().parent / "results.json"
RECIPES = ("digits_torch", "digits_keras", "resnet_jetson")
# edgekiln recipe -> (hand-written script's recipe, extra overrides: a single x86 CPU target)
SETUPS = {"digits_torch": ("digits_torch", []), "digits_keras": ("digits_keras", []),
          "resnet_jetson": ("resnet_cpu", ["run.targets=[cpu]"])}
STAGES = ("export", "optimize", "quantize", "validate", "package")
RATIO_AIM, CACHED_AIM = 1.15, 0.5


def timed(command: list[str]) -> float:
    """Wall-clock seconds of ``command`` run from the repository root; fails loudly."""
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-20:])
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{tail}")
    return seconds


def run_handwritten(recipe: str) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="edgekiln-bench-hw-"))
    try:
        wall = timed([sys.executable, str(HANDWRITTEN), "--recipe", SETUPS[recipe][0],
                      "--out", str(out / "out")])
        steps = json.loads((out / "out" / "timings.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "steps": steps}


def run_edgekiln(recipe: str) -> dict[str, Any]:
    """Cold build on a fresh artifacts dir (so a fresh cache), then the same command again."""
    artifacts = Path(tempfile.mkdtemp(prefix="edgekiln-bench-ek-"))
    command = [sys.executable, "-m", "pipeline", f"recipe={recipe}",
               f"run.artifacts_dir={artifacts}", *SETUPS[recipe][1]]
    try:
        cold = timed(command)
        cold_record = json.loads((artifacts / recipe / "run.json").read_text())
        cached = timed(command)
        cached_record = json.loads((artifacts / recipe / "run.json").read_text())
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    return {"cold": cold, "cached": cached, "cold_in_process": cold_record["seconds"],
            "cached_in_process": cached_record["seconds"],
            "cold_stages": _stage_seconds(cold_record),
            "cold_all_ran": all(s["status"] == "ran" for s in cold_record["stages"]),
            "cached_all_cached": all(s["status"] == "cached" for s in cached_record["stages"])}


def _stage_seconds(record: dict[str, Any]) -> dict[str, float]:
    return {s["stage"] + (f"@{s['target']}" if s["target"] else ""): s["seconds"]
            for s in record["stages"]}


def measure(recipe: str, repeat: int) -> dict[str, Any]:
    """Alternate hand-written and edgekiln runs ``repeat`` times; medians of every number."""
    hand, edge = [], []
    for index in range(repeat):
        order = (("hw", "ek") if index % 2 == 0 else ("ek", "hw"))
        for which in order:
            if which == "hw":
                hand.append(run_handwritten(recipe))
            else:
                edge.append(run_edgekiln(recipe))
            last = hand[-1]["wall"] if which == "hw" else edge[-1]["cold"]
            print(f"  {recipe} #{index + 1} {which}: {last:.2f}s", file=sys.stderr, flush=True)
    median = statistics.median
    handwritten, cold = median(r["wall"] for r in hand), median(r["cold"] for r in edge)
    stages = {name: median(r["cold_stages"][name] for r in edge) for name in
              edge[0]["cold_stages"]}
    steps = {name: median(r["steps"][name] for r in hand) for name in hand[0]["steps"]}
    return {
        "recipe": recipe, "repeat": repeat, "handwritten_s": round(handwritten, 3),
        "edgekiln_cold_s": round(cold, 3), "ratio": round(cold / handwritten, 3),
        "edgekiln_cached_s": round(median(r["cached"] for r in edge), 3),
        "all_cached": all(r["cached_all_cached"] for r in edge),
        "cold_all_ran": all(r["cold_all_ran"] for r in edge),
        "edgekiln_cold_in_process_s": median(r["cold_in_process"] for r in edge),
        "edgekiln_cached_in_process_s": median(r["cached_in_process"] for r in edge),
        "handwritten_in_process_s": steps.get("total"),
        "edgekiln_stages_s": stages, "handwritten_steps_s": steps,
        "samples": {"handwritten_s": [round(r["wall"], 3) for r in hand],
                    "edgekiln_cold_s": [round(r["cold"], 3) for r in edge],
                    "edgekiln_cached_s": [round(r["cached"], 3) for r in edge]},
    }


def summary(results: list[dict[str, Any]]) -> str:
    header = (f"{'recipe':<14} {'handwritten s':>13} {'edgekiln cold s':>15} {'ratio':>6} "
              f"{'cached s':>9} {'all cached':>10}")
    lines = [header, "-" * len(header)]
    for r in results:
        ratio_flag = "" if r["ratio"] <= RATIO_AIM else " !"
        cached_flag = "" if r["edgekiln_cached_s"] <= CACHED_AIM else " !"
        lines.append(f"{r['recipe']:<14} {r['handwritten_s']:>13.2f} "
                     f"{r['edgekiln_cold_s']:>15.2f} {r['ratio']:>6.2f}{ratio_flag:<2}"
                     f"{r['edgekiln_cached_s']:>7.2f}{cached_flag:<2} "
                     f"{'yes' if r['all_cached'] else 'NO':>10}")
    lines.append(f"(aims: ratio <= {RATIO_AIM}, cached rebuild <= {CACHED_AIM} s; ! = missed)")
    return "\n".join(lines)


def stage_table(result: dict[str, Any]) -> str:
    """edgekiln's per-stage seconds beside the hand-written script's step seconds."""
    lines = [f"{result['recipe']}: per stage (s)",
             f"  {'stage':<18} {'edgekiln':>9} {'handwritten':>12} {'diff':>7}"]
    steps = result["handwritten_steps_s"]
    for node, seconds in result["edgekiln_stages_s"].items():
        mine = steps.get(node.split("@")[0])
        theirs = "-" if mine is None else f"{mine:.2f}"
        diff = "" if mine is None else f"{seconds - mine:+.2f}"
        lines.append(f"  {node:<18} {seconds:>9.2f} {theirs:>12} {diff:>7}")
    inside, total = result["edgekiln_cold_in_process_s"], result["edgekiln_cold_s"]
    lines.append(f"  {'sum of stages':<18} {sum(result['edgekiln_stages_s'].values()):>9.2f} "
                 f"{sum(steps[s] for s in STAGES if s in steps):>12.2f}")
    lines.append(f"  {'in-process total':<18} {inside:>9.2f} {steps['total']:>12.2f}")
    lines.append(f"  {'process wall':<18} {total:>9.2f} {result['handwritten_s']:>12.2f}")
    lines.append(f"  process start/imports/Hydra/exit: edgekiln {total - inside:.2f} s, "
                 f"handwritten {result['handwritten_s'] - steps['total']:.2f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = [measure(recipe, max(args.repeat, 1)) for recipe in args.recipes]
    print(summary(results))
    for result in results:
        print()
        print(stage_table(result))
    args.out.write_text(json.dumps({"results": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    if not all(r["all_cached"] and r["cold_all_ran"] for r in results):
        raise SystemExit("a cold build did not run every stage or a rebuild was not all cached")


if __name__ == "__main__":
    main()
