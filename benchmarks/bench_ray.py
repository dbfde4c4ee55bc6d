"""Cold build of bundled recipes on a 1-worker vs a 2-worker local Ray cluster.

``python benchmarks/bench_ray.py [--recipes digits_torch digits_keras resnet_jetson]
[--runs 2] [--cpus 1]``. Each run starts a fresh loopback cluster (a head with ``--cpus`` CPUs,
plus one more worker with as many for the 2-worker case), builds every recipe in one multirun
(``-m recipe=a,b,c run.executor=ray``) into an empty artifacts folder, and stops the cluster;
the two cases alternate run by run so that noise on this shared machine hits both. The
cluster's start-up is not timed. Prints min/median/max per case and the ratio of the medians
as Markdown, and writes ``benchmarks/ray_results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.fixtures import ray_cluster  # noqa: E402 -- the tests' loopback cluster

RESULTS = Path(__file__).resolve().parent / "ray_results.json"
CASES = ("1 worker", "2 workers")


def cold_build(recipes: list[str], workers: int, cpus: int, scratch: Path) -> float:
    """Wall seconds of one cold multirun of ``recipes`` on a fresh ``workers``-node cluster."""
    nodes = [ray_cluster.Node(cpus, {f"edgekiln/bench{i}": 1}) for i in range(workers)]
    cluster = ray_cluster.start(nodes)
    artifacts = Path(tempfile.mkdtemp(prefix="cold-", dir=scratch))
    command = [sys.executable, "-m", "pipeline", "-m", f"recipe={','.join(recipes)}",
               "run.executor=ray", f"run.ray.address={cluster.address}",
               f"run.artifacts_dir={artifacts}", "run.progress=false"]
    try:
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                              env={**os.environ, **cluster.env}, timeout=1800)
        seconds = time.perf_counter() - start
    finally:
        cluster.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n"
                         + "\n".join(proc.stderr.splitlines()[-20:]))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+",
                        default=["digits_torch", "digits_keras", "resnet_jetson"])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs each Ray node advertises")
    args = parser.parse_args()
    times: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as scratch:
        for run in range(args.runs):
            order = CASES if run % 2 == 0 else tuple(reversed(CASES))
            for case in order:
                workers = 1 if case == CASES[0] else 2
                seconds = cold_build(args.recipes, workers, args.cpus, Path(scratch))
                times[case].append(seconds)
                print(f"run {run + 1}: {case}: {seconds:.1f} s", file=sys.stderr)
    medians = {case: statistics.median(values) for case, values in times.items()}
    ratio = medians[CASES[0]] / medians[CASES[1]]
    print(f"Cold build of {', '.join(args.recipes)} (one multirun), {args.cpus} CPU per Ray "
          f"node, {args.runs} runs each, alternating:\n")
    print("| cluster | min s | median s | max s |\n|---|---|---|---|")
    for case, values in times.items():
        print(f"| {case} | {min(values):.1f} | {medians[case]:.1f} | {max(values):.1f} |")
    print(f"\n1-worker / 2-worker median: {ratio:.2f}x (machine: {os.cpu_count()} cores)")
    RESULTS.write_text(json.dumps({"recipes": args.recipes, "cpus_per_node": args.cpus,
                                   "runs": times, "median_ratio": ratio,
                                   "machine_cores": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
