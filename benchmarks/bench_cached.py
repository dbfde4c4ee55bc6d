"""Cached (no-op) rebuild time of edgekiln, optionally side by side with an older revision.

``python benchmarks/bench_cached.py [--recipes digits_torch resnet_jetson] [--runs 7]
[--baseline REV]``. Each recipe is built once cold into a temporary artifacts folder, then
rebuilt ``--runs`` times with nothing changed, as a subprocess from the repository root. With
``--baseline`` the same is done in a git worktree of REV (its own code, its own artifacts), and
the two are alternated run by run so that noise on this shared machine hits both. Prints
min/median/max per recipe and revision and writes ``benchmarks/cached_results.json``.
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "cached_results.json"
AIM = 0.5  # seconds, issue 7: a cached rebuild no slower than before the declared graph


def build(tree: Path, recipe: str, artifacts: Path) -> float:
    """Wall seconds of ``python -m pipeline recipe=...`` run in ``tree``; fails loudly."""
    command = [sys.executable, "-m", "pipeline", f"recipe={recipe}",
               f"run.artifacts_dir={artifacts}", "run.progress=false"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(command)} exited {proc.returncode}:\n"
                         + "\n".join(proc.stderr.splitlines()[-15:]))
    return seconds


def git(*args: str) -> None:
    git_exe = shutil.which("git")
    if git_exe is None:
        raise SystemExit("--baseline needs git on PATH")
    subprocess.run([git_exe, *args], cwd=ROOT, check=True, capture_output=True)


def worktree(rev: str, parent: Path) -> Path:
    path = parent / f"baseline-{rev}"
    git("worktree", "add", "--detach", str(path), rev)
    return path


def measure(trees: dict[str, Path], recipe: str, runs: int, scratch: Path) -> dict:
    artifacts = {name: scratch / f"{name}-{recipe}" for name in trees}
    for name, tree in trees.items():
        build(tree, recipe, artifacts[name])  # cold, fills the cache
    times: dict[str, list[float]] = {name: [] for name in trees}
    for run in range(runs):
        order = list(trees) if run % 2 == 0 else list(reversed(trees))
        for name in order:
            times[name].append(build(trees[name], recipe, artifacts[name]))
    return {name: {"min": min(t), "median": statistics.median(t), "max": max(t), "runs": t}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["digits_torch", "resnet_jetson"])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", help="git revision to compare with (e.g. HEAD~5)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="edgekiln-bench-cached-"))
    trees = {"current": ROOT}
    try:
        if args.baseline:
            trees[args.baseline] = worktree(args.baseline, scratch)
        results = {recipe: measure(trees, recipe, args.runs, scratch) for recipe in args.recipes}
    finally:
        if args.baseline:
            git("worktree", "remove", "--force", str(scratch / f"baseline-{args.baseline}"))
        shutil.rmtree(scratch, ignore_errors=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print("| recipe | revision | min s | median s | max s |")
    print("|---|---|---|---|---|")
    for recipe, by_tree in results.items():
        for name, t in by_tree.items():
            flag = "" if t["median"] <= AIM else f"  (over the {AIM} s aim)"
            print(f"| {recipe} | {name} | {t['min']:.3f} | {t['median']:.3f} | "
                  f"{t['max']:.3f} |{flag}")


if __name__ == "__main__":
    main()
