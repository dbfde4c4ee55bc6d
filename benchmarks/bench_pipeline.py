"""edgekiln against hand-written scripts, and against itself: cold builds, no-op rebuilds,
targets, jobs; wall seconds and peak memory of whole processes, side by side in one run.

``python benchmarks/bench_pipeline.py [--recipes digits_torch resnet_jetson] [--repeat 3]
[--noop-runs 7] [--no-targets]``. Every measurement is a fresh process started from the
repository root on a fresh temporary artifacts folder (so a fresh cache), timed from start to
exit, with its peak RSS (``os.wait4``: the process and the workers it waited for). Each repeat
runs the scenarios of a group in a rotated order, so the machine's noise hits each of them.

- **cold**: benchmarks/handwritten.py with each exporter, and edgekiln with the same exporter
  (``export.exporter=...``); the ratio is edgekiln over the script with the same exporter.
- **no-op**: the same edgekiln command again with nothing changed, through the fast path and
  through the full path (``EDGEKILN_NO_FAST_PATH=1``), alternated run by run.
- **targets x jobs**: resnet_multi cold with its first 1, 2 and 4 targets at ``run.jobs`` 1
  and 2.
- **Olive** (with ``--olive-python``, an interpreter that has olive-ai, see docs/benchmarks.md):
  benchmarks/olive_baseline.py's workflow of the same passes, cold and its cached rerun.

Reports min / median / max per scenario; writes ``benchmarks/pipeline_results.json`` and
``benchmarks/pipeline_results.md`` (both git-ignored).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HANDWRITTEN = Path(__file__).resolve().parent / "handwritten.py"
OLIVE = Path(__file__).resolve().parent / "olive_baseline.py"
OUT = Path(__file__).resolve().parent / "pipeline_results"
# edgekiln recipe -> (hand-written script's recipe, overrides that make edgekiln do the
# script's work: one x86 CPU target, static INT8 with as many calibration samples, validation
# on the whole evaluation split; the recipes themselves choose by measurement, quantize auto)
_DIGITS = ["quantize.mode=static", "quantize.calibration.samples=256", "validate.samples=512",
           "validate.gates.min_speedup=0"]  # the script gates no speed; a 0.02 ms model
SETUPS = {"digits_torch": ("digits_torch", _DIGITS), "digits_keras": ("digits_keras", _DIGITS),
          "resnet_jetson": ("resnet_cpu", ["run.targets=[cpu]", "quantize.mode=static",
                                           "quantize.calibration.samples=64",
                                           "validate.samples=128"])}
TORCH_RECIPES = ("digits_torch", "resnet_jetson")
MULTI_TARGETS = ("x86_cpu", "jetson_orin", "intel_cpu_openvino", "android_nnapi")


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        return {"min_s": round(min(self.seconds), 3),
                "median_s": round(statistics.median(self.seconds), 3),
                "max_s": round(max(self.seconds), 3),
                "median_rss_mb": round(statistics.median(self.rss_mb), 1),
                "runs": len(self.seconds)}


def measure(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``command`` run from the repository root."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            tail = "\n".join(errors.read().decode(errors="replace").splitlines()[-20:])
            raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{tail}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def edgekiln(recipe: str, artifacts: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", f"recipe={recipe}",
            f"run.artifacts_dir={artifacts}", "run.progress=false", *overrides]


def handwritten(recipe: str, out: Path, exporter: str) -> list[str]:
    return [sys.executable, str(HANDWRITTEN), "--recipe", SETUPS[recipe][0], "--out", str(out),
            "--exporter", exporter]


def exporters(recipe: str) -> list[str]:
    """The exporters both sides offer for this recipe (TorchScript: torch models only)."""
    return ["dynamo", "torchscript"] if recipe in TORCH_RECIPES else ["dynamo"]


class Bench:
    def __init__(self, repeat: int, noop_runs: int, olive_python: str | None) -> None:
        self.repeat, self.noop_runs, self.olive_python = repeat, noop_runs, olive_python
        self.samples: dict[tuple[str, str], Samples] = {}

    def add(self, group: str, name: str, command: list[str],
            env: dict[str, str] | None = None) -> None:
        seconds, rss = measure(command, env)
        found = self.samples.setdefault((group, name), Samples())
        found.seconds.append(seconds)
        found.rss_mb.append(rss)
        print(f"  {group} | {name}: {seconds:.2f} s, {rss:.0f} MB", file=sys.stderr, flush=True)

    def cold_and_noop(self, recipe: str) -> None:
        overrides = SETUPS[recipe][1]
        for index in range(self.repeat):
            scenarios = [(side, exporter) for exporter in exporters(recipe)
                         for side in ("handwritten", "edgekiln")]
            if self.olive_python and recipe in TORCH_RECIPES:
                scenarios.append(("olive", "olive"))
            scenarios = scenarios[index % len(scenarios):] + scenarios[:index % len(scenarios)]
            for side, exporter in scenarios:
                with tempfile.TemporaryDirectory(prefix="edgekiln-bench-") as tmp:
                    where = Path(tmp)
                    if side == "olive":
                        self.olive(recipe, where)
                        continue
                    if side == "handwritten":
                        self.add(recipe, f"cold, hand-written ({exporter})",
                                 handwritten(recipe, where / "out", exporter))
                        continue
                    chosen = [] if exporter == "dynamo" else [f"export.exporter={exporter}"]
                    command = edgekiln(recipe, where, *overrides, *chosen)
                    self.add(recipe, f"cold, edgekiln ({exporter})", command)
                    if exporter == "dynamo":
                        self.noop(recipe, command)

    def olive(self, recipe: str, where: Path) -> None:
        command = [str(self.olive_python), str(OLIVE), "--recipe", SETUPS[recipe][0],
                   "--out", str(where / "olive")]
        self.add(recipe, "cold, Olive", command)
        self.add(recipe, "no-op, Olive's cached rerun", command)

    def noop(self, recipe: str, command: list[str]) -> None:
        self.add(recipe, "no-op, fast path (first, records stamps)", command)
        for index in range(self.noop_runs):
            order = [{}, {"EDGEKILN_NO_FAST_PATH": "1"}][::1 if index % 2 == 0 else -1]
            for env in order:
                which = "full path" if env else "fast path"
                self.add(recipe, f"no-op, {which}", command, env)

    def targets_and_jobs(self) -> None:
        scenarios = [(count, jobs) for count in (1, 2, 4) for jobs in (1, 2)]
        for index in range(self.repeat):
            for count, jobs in scenarios[index % 6:] + scenarios[:index % 6]:
                targets = ",".join(MULTI_TARGETS[:count])
                with tempfile.TemporaryDirectory(prefix="edgekiln-bench-") as tmp:
                    self.add("resnet_multi", f"cold, {count} target(s), jobs={jobs}",
                             edgekiln("resnet_multi", Path(tmp), f"run.targets=[{targets}]",
                                      f"run.jobs={jobs}"))


def ratios(stats: dict[tuple[str, str], dict[str, Any]]) -> dict[str, float]:
    """The comparisons the issue asks for, from medians."""
    def median(group: str, name: str) -> float | None:
        found = stats.get((group, name))
        return found["median_s"] if found else None

    found = {}
    for group in {g for g, _ in stats}:
        for exporter in ("dynamo", "torchscript"):
            ours = median(group, f"cold, edgekiln ({exporter})")
            theirs = median(group, f"cold, hand-written ({exporter})")
            if ours and theirs:
                found[f"{group}: cold edgekiln / hand-written ({exporter})"] = ours / theirs
        fast, full = median(group, "no-op, fast path"), median(group, "no-op, full path")
        if fast and full:
            found[f"{group}: no-op full path / fast path"] = full / fast
        olive = median(group, "no-op, Olive's cached rerun")
        if fast and olive:
            found[f"{group}: no-op Olive cached / edgekiln fast path"] = olive / fast
        olive, ours = median(group, "cold, Olive"), median(group, "cold, edgekiln (dynamo)")
        if ours and olive:
            found[f"{group}: cold edgekiln (dynamo) / Olive"] = ours / olive
        for count in (1, 2, 4):
            one = median(group, f"cold, {count} target(s), jobs=1")
            two = median(group, f"cold, {count} target(s), jobs=2")
            if one and two:
                found[f"{group}: {count} target(s), jobs=2 / jobs=1"] = two / one
    return {k: round(v, 3) for k, v in sorted(found.items())}


def markdown(stats: dict[tuple[str, str], dict[str, Any]], found: dict[str, float],
             olive: str) -> str:
    lines = ["| recipe | scenario | min s | median s | max s | peak RSS MB | runs |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (group, name), s in stats.items():
        lines.append(f"| {group} | {name} | {s['min_s']:.3f} | {s['median_s']:.3f} | "
                     f"{s['max_s']:.3f} | {s['median_rss_mb']:.0f} | {s['runs']} |")
    lines += ["", "| ratio of medians | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in found.items()]
    return "\n".join([*lines, "", f"Olive: {olive}", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=sorted(SETUPS),
                        default=["digits_torch", "resnet_jetson"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--noop-runs", type=int, default=7)
    parser.add_argument("--no-targets", action="store_true", help="skip targets x jobs")
    parser.add_argument("--olive-python", help="an interpreter with olive-ai installed")
    args = parser.parse_args()
    bench = Bench(max(args.repeat, 1), max(args.noop_runs, 1), args.olive_python)
    for recipe in args.recipes:
        bench.cold_and_noop(recipe)
    if not args.no_targets:
        bench.targets_and_jobs()
    olive = (f"benchmarks/olive_baseline.py with {args.olive_python}" if args.olive_python
             else "not measured (no --olive-python; docs/benchmarks.md sets one up)")
    stats = {key: samples.stats() for key, samples in bench.samples.items()}
    found = ratios(stats)
    table = markdown(stats, found, olive)
    print(table)
    OUT.with_suffix(".json").write_text(json.dumps(
        {"python": sys.version, "cpus": os.cpu_count(), "olive": olive, "ratios": found,
         "scenarios": [{"recipe": g, "scenario": n, **s} for (g, n), s in stats.items()]},
        indent=2) + "\n")
    OUT.with_suffix(".md").write_text(table)
    print(f"wrote {OUT.with_suffix('.json')} and {OUT.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
