"""Cost of a cached rebuild with the shared S3 cache (run.cache_url) against the local one.

``python benchmarks/bench_remote_cache.py [--recipe digits_torch] [--runs 5]``. Starts moto's S3
server on loopback, builds the recipe cold in three folders, then rebuilds it ``--runs`` times in
each, alternating the order run by run so that noise on this shared machine hits all alike:

- ``local only``: no cache_url, the warm local cache (the everyday rebuild);
- ``warm local + S3``: cache_url set, everything in the local cache (the bucket is only probed);
- ``empty local, all from S3``: cache_url set, the local cache deleted before each run, so every
  stage is downloaded, verified and committed locally.

Loopback S3 has no network latency: on a real bucket each entry costs a few round trips more.
Prints a Markdown table and writes ``benchmarks/remote_cache_results.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "remote_cache_results.json"
sys.path.insert(0, str(ROOT))  # tests.fixtures: the same moto server the tests start

from tests.fixtures.s3_server import aws_env, start_moto  # noqa: E402

BUCKET = "edgekiln-bench"


def build(work: Path, recipe: str, env: dict[str, str], url: str | None) -> float:
    """Wall seconds of one CLI run in ``work``; fails loudly."""
    command = [sys.executable, "-m", "pipeline", f"recipe={recipe}", "run.artifacts_dir=artifacts",
               "model.checkpoint=digits_cnn.pt", "run.progress=false",
               *([f"run.cache_url={url}"] if url else [])]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False,
                          env={**env, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{work}: {' '.join(command)} exited {proc.returncode}:\n"
                         + "\n".join(proc.stderr.splitlines()[-15:]))
    return seconds


def measure(recipe: str, runs: int, scratch: Path, env: dict[str, str]) -> dict:
    url = f"s3://{BUCKET}/cache"
    setups = {"local only": None, "warm local + S3": url, "empty local, all from S3": url}
    works = {}
    for n, (name, setup_url) in enumerate(setups.items()):
        works[name] = scratch / f"w{n}"
        works[name].mkdir()
        shutil.copy(ROOT / "recipes" / "zoo" / "digits_cnn.pt", works[name] / "digits_cnn.pt")
        build(works[name], recipe, env, setup_url)  # cold: fills the local cache (and bucket)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for run in range(runs):
        order = list(setups) if run % 2 == 0 else list(reversed(setups))
        for name in order:
            if name.startswith("empty local"):
                shutil.rmtree(works[name] / "artifacts" / ".cache")
            times[name].append(build(works[name], recipe, env, setups[name]))
    return {name: {"min": min(t), "median": statistics.median(t), "max": max(t), "runs": t}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="digits_torch")  # its checkpoint is copied in
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="edgekiln-bench-remote-"))
    try:
        with start_moto() as server:
            os.environ.update(aws_env(server.endpoint, scratch))  # this process and the runs
            import boto3

            boto3.client("s3").create_bucket(Bucket=BUCKET)
            results = measure(args.recipe, args.runs, scratch, dict(os.environ))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    RESULTS.write_text(json.dumps({args.recipe: results}, indent=2) + "\n")
    base = results["local only"]["median"]
    print(f"cached rebuild of {args.recipe}, {args.runs} runs each, moto S3 on loopback\n")
    print("| setup | min s | median s | max s | median vs local |")
    print("|---|---|---|---|---|")
    for name, t in results.items():
        print(f"| {name} | {t['min']:.3f} | {t['median']:.3f} | {t['max']:.3f} | "
              f"{t['median'] / base:.2f}x |")


if __name__ == "__main__":
    main()
