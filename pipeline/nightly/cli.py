"""``edgekiln nightly [options] [key=value ...]``: the nightly's command line.

Options are the nightly's own (argparse); ``key=value`` arguments are Hydra overrides passed to
every recipe, as ``edgekiln recipe=NAME key=value`` would take them. Errors print as one
paragraph with their exit code; ``--verbose`` (or ``PIPELINE_FULL_ERROR=1``) adds tracebacks.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import traceback
from pathlib import Path

from pipeline.errors import PipelineError, RecipeError

EPILOG = """exit codes: 0 every case green, 4 a regression or a failed gate, 1 a stage failed
(or a recipe could not be built), 2 a mistake on this command line or in the tolerance file.
Reports go to ARTIFACTS/nightly/<UTC timestamp>/ (report.html, report.json, junit.xml), the
history to ARTIFACTS/nightly/history.sqlite. See docs/nightly.md."""


def parser() -> argparse.ArgumentParser:
    """The nightly's options (``edgekiln nightly -h``)."""
    cli = argparse.ArgumentParser(
        prog="edgekiln nightly", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build every recipe, compare each bundle with its last green night, "
                    "publish only what is green, and report.")
    cli.add_argument("overrides", nargs="*", metavar="key=value",
                     help="Hydra overrides for every recipe (e.g. run.jobs=1)")
    cli.add_argument("--recipes", action="append", metavar="GLOB",
                     help="recipe names to build (fnmatch, comma-separated or repeated; "
                          "default: every recipe found)")
    cli.add_argument("--tolerance-file", type=Path, metavar="YAML",
                     help="tolerances per recipe/target (see docs/nightly.md)")
    cli.add_argument("--config-dir", type=Path, metavar="DIR",
                     help="a folder of recipes (recipe/NAME.yaml), as for edgekiln")
    cli.add_argument("--artifacts-dir", type=Path, metavar="DIR",
                     help="bundles, cache, history and reports (default: run.artifacts_dir, "
                          "else ./artifacts)")
    cli.add_argument("--rebaseline", action="append", default=[], metavar="RECIPE/BUNDLE",
                     help="accept tonight's results as the new baseline (fnmatch, repeatable)")
    cli.add_argument("--timing-rounds", type=int, default=5, metavar="N",
                     help="rounds of the nightly's own latency timing (default 5)")
    cli.add_argument("--timing-runs", type=int, default=30, metavar="N",
                     help="batch-1 runs per timing round, at most (default 30)")
    cli.add_argument("--timing-budget", type=float, default=2.0, metavar="SECONDS",
                     help="timed runs per bundle fit in this (default 2; at least 3 a round)")
    cli.add_argument("--recipe-timeout", type=float, metavar="SECONDS",
                     help="stop a recipe's build after this long (default: no limit)")
    cli.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    return cli


def main(argv: list[str]) -> int:
    """Run the nightly; returns its exit code."""
    args = parser().parse_args(argv)
    if args.verbose:
        os.environ["PIPELINE_FULL_ERROR"] = os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return _run(args)
    except PipelineError as exc:
        if os.environ.get("PIPELINE_FULL_ERROR") == "1":
            traceback.print_exc()
        print(f"edgekiln nightly: {exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    from pipeline.nightly import tolerances
    from pipeline.nightly.night import NightOptions, run_night
    from pipeline.nightly.timing import TimingSettings

    artifacts = _artifacts(args.artifacts_dir, args.overrides)
    overrides = _check_overrides(args.overrides)
    if args.config_dir is not None and not (args.config_dir / "recipe").is_dir():
        raise RecipeError(f"--config-dir: '{args.config_dir}' has no recipe/ folder.")
    tolerances.load(args.tolerance_file)  # a typo fails now, not in every recipe's build
    options = NightOptions(
        recipes=select(args.recipes, args.config_dir), artifacts=artifacts,
        tolerance_file=_absolute(args.tolerance_file), config_dir=_absolute(args.config_dir),
        overrides=[*overrides, f"run.artifacts_dir={artifacts}"],
        timing=TimingSettings(rounds=args.timing_rounds, runs=args.timing_runs,
                              budget=args.timing_budget),
        rebaseline=tuple(args.rebaseline), recipe_timeout=args.recipe_timeout)
    return run_night(options)


def select(patterns: list[str] | None, config_dir: Path | None) -> list[str]:
    """The recipes found (``--config-dir`` too) whose names match one of ``patterns``."""
    from pipeline.cli import list_recipes

    found = set(list_recipes())
    if config_dir is not None:
        found.update(p.stem for p in (config_dir / "recipe").glob("*.yaml"))
    wanted = [p.strip() for item in patterns or ["*"] for p in item.split(",") if p.strip()]
    chosen = [name for name in sorted(found)
              if any(fnmatch.fnmatchcase(name, p) for p in wanted)]
    if not chosen:
        raise RecipeError(f"--recipes {','.join(wanted)}: no recipe matches. Recipes found: "
                          f"{', '.join(sorted(found)) or 'none'}.")
    return chosen


def _check_overrides(overrides: list[str]) -> list[str]:
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"'{item}': expected key=value (a Hydra override for every "
                              "recipe); the nightly's options start with --.")
        key = item.split("=", 1)[0].lstrip("+~")
        if key == "recipe":
            raise RecipeError(f"'{item}': the nightly builds the recipes --recipes selects "
                              "(--recipes NAME for one).")
        if key == "run.dry_run":
            raise RecipeError(f"'{item}': the nightly builds; for what one recipe would build "
                              "use edgekiln recipe=NAME run.dry_run=true.")
    return [o for o in overrides if not o.startswith("run.artifacts_dir=")]


def _absolute(path: Path | None) -> Path | None:
    return path.resolve() if path is not None else None


def _artifacts(given: Path | None, overrides: list[str]) -> Path:
    """One artifacts folder for every recipe, the history and the reports."""
    if given is not None:
        return given.resolve()
    for item in reversed(overrides):
        if item.startswith("run.artifacts_dir="):
            return Path(item.split("=", 1)[1]).resolve()
    return Path("artifacts").resolve()
