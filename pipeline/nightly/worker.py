"""One recipe of a night, in a process of its own: compose, build, judge, publish the green.

The night runs each recipe in a fresh interpreter (``pipeline.nightly.night``): frameworks do
not always survive each other in one process (tensorflow then torch segfaults here, as a
multirun of digits_keras,digits_torch does), and a crash must cost one recipe, not the night.
The worker reads its job from a JSON file and writes its verdicts as JSON beside it; a worker
that dies leaves no verdicts, which the night reports as the recipe's failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import GateError, PipelineError, RecipeError
from pipeline.nightly.history import Case, History
from pipeline.nightly.judge import Judge, Verdict
from pipeline.nightly.timing import TimingSettings

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from rich.console import Console


def main(argv: list[str]) -> int:
    """``worker JOB.json``: build the job's recipe, write ``JOB.verdicts.json``."""
    from rich.console import Console

    from pipeline.cli import register_primary_config
    from pipeline.nightly import tolerances

    job_file = Path(argv[0])
    job = json.loads(job_file.read_text())
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    policy = tolerances.load(Path(job["tolerance_file"]) if job["tolerance_file"] else None)
    with History(Path(job["history"])) as history:
        judge = Judge(history, job["night_id"], policy, TimingSettings(**job["timing"]),
                      tuple(job["rebaseline"]))
        try:
            register_primary_config()  # loads the stage kinds: a broken plugin fails here
        except PipelineError as exc:
            _failed(judge, job["recipe"], exc, console)
        else:
            _build(job, judge, console)
    out = job_file.with_suffix(".verdicts.json")
    out.write_text(json.dumps([v.as_dict() for v in judge.verdicts], sort_keys=True))
    return 0


def _build(job: dict[str, Any], judge: Judge, console: Console) -> None:
    from pipeline.runner import run_recipe

    config_dir = Path(job["config_dir"]) if job["config_dir"] else None
    try:
        run_recipe(compose(job["recipe"], job["overrides"], config_dir), console, judge)
    except PipelineError as exc:
        _failed(judge, job["recipe"], exc, console)


def _failed(judge: Judge, recipe: str, exc: PipelineError, console: Console) -> None:
    from pipeline.runner import explain

    console.print(explain(exc))
    # a failure no bundle's chain explains (the plan, publishing, a stage of no bundle)
    if all(v.case.green for v in judge.verdicts):
        status = "gate" if isinstance(exc, GateError) else "error"
        judge.verdicts.append(Verdict(Case(recipe, "-", None, status, str(exc), {}), None))


def compose(recipe: str, overrides: list[str], config_dir: Path | None) -> DictConfig:
    """The recipe composed as ``edgekiln recipe=NAME OVERRIDES --config-dir DIR`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    from pipeline.cli import BUNDLED_RECIPES

    root = (config_dir or BUNDLED_RECIPES).resolve()
    try:
        with initialize_config_dir(config_dir=str(root), version_base="1.3"):
            return hydra_compose(config_name="edgekiln", overrides=[f"recipe={recipe}",
                                                                    *overrides])
    except (HydraException, OmegaConfBaseException, YAMLError) as exc:
        text = " ".join(str(exc).split())[:600] or type(exc).__name__  # one paragraph
        raise RecipeError(f"recipe '{recipe}' does not compose: {text}") from None
