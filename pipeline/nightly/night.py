"""One night: build each selected recipe, judge its bundles, record them, write the reports.

Each recipe builds in a process of its own (``pipeline.nightly.worker``), which composes it as
the CLI would and runs ``pipeline.runner.run_recipe`` (live progress, the run's tables,
run.json) with the nightly's ``Judge`` deciding what publishes. Here the night records each
recipe's cases as it finishes, so a killed night keeps what it did. A recipe that fails, even
to compose, or whose process dies, becomes a failed case and the night goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.errors import EnvironmentProblem
from pipeline.nightly import junit, report
from pipeline.nightly.history import Case, History
from pipeline.nightly.judge import Verdict
from pipeline.nightly.timing import TimingSettings

HISTORY = "history.sqlite"
# the worker's interpreter: argv = edgekiln's root, the working directory, the job file
WORKER = ("import sys; root, cwd = sys.argv[1:3]; sys.path[0:1] = [root, cwd]; "
          "from pipeline.nightly.worker import main; sys.exit(main(sys.argv[3:]))")
EXIT_GREEN, EXIT_STAGE, EXIT_QUALITY = 0, 1, 4


@dataclass(frozen=True)
class NightOptions:
    """What one night builds, and how it judges and times the bundles."""

    recipes: list[str]
    artifacts: Path
    tolerance_file: Path | None = None  # checked by the caller; each worker reads it
    overrides: list[str] = field(default_factory=list)  # Hydra overrides for every recipe
    config_dir: Path | None = None
    timing: TimingSettings = field(default_factory=TimingSettings)
    rebaseline: tuple[str, ...] = ()
    recipe_timeout: float | None = None  # seconds one recipe's build may take


def run_night(options: NightOptions, console: Console | None = None) -> int:
    """Build, judge, publish and report every recipe of ``options``; returns the exit code."""
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    started = time.time()
    night_dir = _night_dir(options.artifacts / "nightly", started)
    with History(options.artifacts / "nightly" / HISTORY) as history:
        night_id = history.start_night(night_dir.name, started, _host())
        verdicts: list[Verdict] = []
        for i, recipe in enumerate(options.recipes, 1):
            console.rule(f"nightly {night_dir.name}: {recipe} ({i}/{len(options.recipes)})")
            for verdict in _build(recipe, options, night_id, night_dir):
                _record(verdict, options.artifacts, history, night_id)  # a killed night keeps it
                verdicts.append(verdict)
        code = exit_code([v.case for v in verdicts])
        history.finish_night(night_id, time.time(), code)
        night = {"night": night_dir.name, "started": started, "finished": time.time(),
                 "exit_code": code, "history": str(history.path), "host": _host()}
        series = {(v.case.recipe, v.case.bundle): history.series(v.case.recipe, v.case.bundle,
                                                                 night_id) for v in verdicts}
    _write_reports(night_dir, night, verdicts, series)
    console.print(report.summary_table(verdicts, f"nightly {night_dir.name}: exit {code}"))
    console.print(f"report: {night_dir / 'report.html'}\njunit:  {night_dir / 'junit.xml'}")
    return code


def exit_code(cases: list[Case]) -> int:
    """1 when a stage failed (or a recipe could not be built), else 4 on a regression or a
    failed gate, else 0."""
    statuses = {case.status for case in cases}
    if "error" in statuses:
        return EXIT_STAGE
    return EXIT_QUALITY if statuses & {"regression", "gate"} else EXIT_GREEN


def _build(recipe: str, options: NightOptions, night_id: int, night_dir: Path) -> list[Verdict]:
    """Build ``recipe`` in a fresh interpreter; its verdicts, or one saying why it died."""
    import pipeline

    job_file = night_dir / f".{recipe}.job.json"
    job = {"recipe": recipe, "overrides": options.overrides, "night_id": night_id,
           "config_dir": str(options.config_dir) if options.config_dir else None,
           "history": str(options.artifacts / "nightly" / HISTORY),
           "tolerance_file": str(options.tolerance_file) if options.tolerance_file else None,
           "timing": dataclasses.asdict(options.timing), "rebaseline": list(options.rebaseline)}
    job_file.write_text(json.dumps(job))
    # this edgekiln first (a team's own pipeline/ in the working directory must not shadow
    # it), then the working directory, where recipes' factories are found
    root = str(Path(pipeline.__file__).resolve().parent.parent)
    command = [sys.executable, "-c", WORKER, root, os.getcwd(), str(job_file)]
    try:
        code = subprocess.run(command, check=False, timeout=options.recipe_timeout).returncode
        why = f"its build process {_ended(code)}"
    except subprocess.TimeoutExpired:
        why = f"its build took longer than --recipe-timeout {options.recipe_timeout:g} s"
    out = job_file.with_suffix(".verdicts.json")
    try:
        return [Verdict.from_dict(data) for data in json.loads(out.read_text())]
    except (OSError, ValueError):
        return [Verdict(Case(recipe, "-", None, "error", f"recipe '{recipe}': {why}", {}), None)]
    finally:
        job_file.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def _ended(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code} without a verdict (see its output above)"


def _record(verdict: Verdict, artifacts: Path, history: History, night_id: int) -> None:
    """Store the case with whether tonight's bundle went live, and find whose bundle is live."""
    case = verdict.case
    live_key = _live_key(artifacts / case.recipe / case.bundle, verdict.node)
    published = case.green and live_key is not None and live_key == case.metrics.get(
        "bundle_key")
    verdict.case = Case(case.recipe, case.bundle, case.target, case.status, case.reason,
                        case.metrics, published)
    history.add_case(night_id, verdict.case)
    if live_key is not None:
        verdict.live_night = (history.live_night(case.recipe, case.bundle, live_key)
                              or "published outside the nightly")


def _live_key(bundle_dir: Path, node: str | None) -> str | None:
    """The publishing stage's cache key recorded in the live bundle's manifest, if any."""
    try:
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        return manifest["stages"][node]["key"] if node else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _night_dir(root: Path, started: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    for n in range(100):  # two nightlies started in the same second get their own folders
        path = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path
    raise EnvironmentProblem(f"{root}: too many nightlies started at {stamp}")


def _host() -> dict[str, Any]:
    from pipeline.keys import tool_version

    return {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "edgekiln": tool_version("edgekiln"), "onnxruntime": tool_version("onnxruntime")}


def _write_reports(night_dir: Path, night: dict[str, Any], verdicts: list[Verdict],
                   series: dict[tuple[str, str], list[Case]]) -> None:
    data = report.as_json(night, verdicts)
    (night_dir / "report.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (night_dir / "report.html").write_text(report.html(data, series), encoding="utf-8")
    (night_dir / "junit.xml").write_text(junit.xml(night, verdicts), encoding="utf-8")
